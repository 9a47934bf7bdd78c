"""The model card (``model.json``): the one contract between the trainer and the streamer, and the names of the
files it describes.

The streamer never imports the trainer; a run folder made by ``n2n train`` holds everything it
needs: ``model.json`` (this card: architecture, normalisation, size multiple, tiling, the
exported files with their sha256, training provenance), ``model.onnx`` (OpenVINO, ONNX Runtime),
``model_int8.xml``/``.bin`` (OpenVINO INT8, when it passed its check) and ``model.ts`` (PyTorch).
The trainer writes the card through :meth:`ModelCard.save`; both sides read it with
:meth:`ModelCard.load`, which checks it and, before a file is used, its sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .noise import estimate_noise_model

__all__ = ["ARTIFACT_FORMATS", "CARD_NAME", "CARD_VERSION", "DEFAULT_NAMES", "INT8_NAME", "ONNX_NAME",
           "TORCHSCRIPT_NAME", "WEIGHTS_NAME", "Architecture", "Artifact", "CardError", "ModelCard", "Normalization",
           "BrightExpert", "Quantization", "estimate_noise_model", "file_digest", "frame_peak", "unet_reach"]

CARD_NAME = "model.json"
CARD_VERSION: Literal[1] = 1
ONNX_NAME = "model.onnx"
"""The ONNX export (OpenVINO, ONNX Runtime)."""
TORCHSCRIPT_NAME = "model.ts"
"""The TorchScript export (PyTorch)."""
INT8_NAME = "model_int8.xml"
"""OpenVINO's INT8 graph (its weights beside it, ``model_int8.bin``)."""
WEIGHTS_NAME = "model.pt"
"""The trained PyTorch weights with their architecture and normalisation (the trainer's)."""
ARTIFACT_FORMATS = ("onnx", "torchscript", "openvino_int8")
DEFAULT_NAMES = {"onnx": ONNX_NAME, "torchscript": TORCHSCRIPT_NAME, "openvino_int8": INT8_NAME}


class CardError(ValueError):
    """A model card is missing, malformed, or does not match the files beside it."""


def unet_reach(levels: int) -> int:
    """Pixels from a tile border beyond which the output of a U-Net with ``levels`` pooling levels
    (a pixel-unshuffle stem counts as one) no longer depends on what lies past that border.

    Per level two 3×3 convolutions on the way down and up, one pooling and one upsampling:
    ``8·2**levels − 6`` pixels; ``2**(levels + 3)`` bounds it."""
    return 2 ** (levels + 3)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Architecture(_Part):
    """The network (trainer/unet.py): enough to rebuild it and to know its reach."""

    name: Literal["unet2d", "bioimageio"] = "unet2d"
    """unet2d: trainer/unet.py's; bioimageio: a zoo package's network (:mod:`streamer.core.zoo`), known only by its
    size multiple (``depth``: its halvings) and what its package says."""
    depth: int = Field(ge=0)
    base_filters: int = Field(ge=1)
    filters: list[int] | None = None
    """Channels per level, full resolution first; null: base_filters doubled per level."""
    block: Literal["conv", "dsconv"] = "conv"
    stem: Literal["none", "unshuffle"] = "none"
    skip: Literal["concat", "add", "project"] = "concat"
    residual: bool = True
    in_channels: int = 1
    out_channels: int = 1
    input_frames: int = Field(1, ge=1, le=16, exclude_if=lambda v: v == 1)
    """Consecutive frames the network sees (causal: t−K+1 … t, oldest first, as the K input channels) to
    denoise frame t; 1: one frame (written only when above 1, so single-frame cards are unchanged). The
    residual output adds to the newest frame (or, with ``residual_frames: mix``, to a learned mix of the K). See
    :mod:`streamer.core.history` for the rule before K frames have arrived."""
    frame_stem: int = Field(0, ge=0, exclude_if=lambda v: v == 0)
    """Channels of the 3×3 convolution shared by the K frames before the first level (0: none)."""
    residual_frames: Literal["newest", "mix"] = Field("newest", exclude_if=lambda v: v == "newest")
    """What the residual output adds to: the newest frame, or a learned weighted sum of the K frames."""
    bias: bool = Field(True, exclude_if=lambda v: v)
    """Whether the convolutions have biases (false: the network scales with its input, f(c·x) = c·f(x))."""
    pads_input: bool = Field(True, exclude_if=lambda v: v)
    """Whether the network pads a frame whose sides are not multiples of the size multiple itself (ours do);
    false (a zoo package's network): the Denoiser pads it (reflect) and crops the output."""
    flops_per_pixel: float | None = None
    """Floating-point operations per input pixel (2 per multiply-add)."""
    parameters: int | None = None

    @model_validator(mode="after")
    def _ours_pool(self) -> Architecture:
        if self.name == "unet2d" and self.depth < 1:
            raise ValueError(f"expected depth >= 1 for a unet2d, got {self.depth}")
        return self

    @property
    def levels(self) -> int:
        """Halvings of resolution from input to bottom (the unshuffle stem is one)."""
        return self.depth + (1 if self.stem == "unshuffle" else 0)


class Normalization(_Part):
    """What the network sees: fitted on the training frames (:meth:`fit`, :meth:`fit_anscombe`) and kept in the card,
    never computed per frame.

    ``meanstd``: ``(x − mean) / std`` in, the inverse out.

    ``anscombe``: the camera's noise stabilised first. A camera's ADU follow ``var(x) = gain·(x − offset) +
    read_noise²`` (photon transfer; ``gain`` in ADU per photo-electron, ``read_noise`` in ADU). The generalised Anscombe
    transform ``A(x) = (2/gain)·sqrt(gain·(x − offset) + 3/8·gain² + read_noise²)`` makes the noise about unit variance
    at every brightness; the network sees ``(A(x) − A(offset)) / std`` (zero where no light falls, so a frame twice
    as bright is twice the input) and its output goes back through the exact unbiased inverse (Mäkitalo & Foi 2013,
    closed form). Nothing depends on the exposure the model was trained at: a model trained on dim frames serves
    bright ones (with a bias-free network, ``model.bias: false``, the network itself scales with its input)."""

    kind: Literal["meanstd", "anscombe"] = "meanstd"
    mean: float
    std: float
    gain: float | None = Field(None, gt=0)
    """anscombe: ADU per photo-electron (the slope of variance against mean)."""
    offset: float | None = None
    """anscombe: the camera's offset (ADU with no light)."""
    read_noise: float | None = Field(None, ge=0)
    """anscombe: the read noise in ADU (rms)."""
    source: str | None = None
    """anscombe: where the noise model came from (estimated from the training pairs, or given)."""

    @field_validator("std")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:  # (pydantic's own words for a bound, and ours)
            raise PydanticCustomError("greater_than", "Input should be greater than 0: expected a finite mean and "
                                      "a positive std, got std={std}", {"gt": 0, "std": v})
        return v

    @model_validator(mode="after")
    def _usable(self) -> Normalization:
        if not math.isfinite(self.mean) or not math.isfinite(self.std) or self.std <= 0:
            raise ValueError(f"expected a finite mean and a positive std, got mean={self.mean}, std={self.std}")
        if self.kind == "anscombe":
            if self.gain is None or self.offset is None or self.read_noise is None:
                raise ValueError("expected gain, offset and read_noise for normalisation kind 'anscombe', got "
                                 f"gain={self.gain}, offset={self.offset}, read_noise={self.read_noise}")
            if not all(math.isfinite(v) for v in (self.gain, self.offset, self.read_noise)):
                raise ValueError(f"expected finite gain, offset and read_noise, got {self.gain}, {self.offset}, "
                                 f"{self.read_noise}")
        return self

    @classmethod
    def fit(cls, stacks: Sequence[np.ndarray]) -> Normalization:
        """Mean and standard deviation over all pixels of all stacks (float64 accumulation)."""
        _check_finite(stacks)
        n = sum(s.size for s in stacks)
        mean = sum(float(s.sum(dtype=np.float64)) for s in stacks) / n
        # frame by frame: no float64 copy of a whole (possibly multi-GB) stack
        var = sum(float(((frame.astype(np.float64) - mean) ** 2).sum()) for s in stacks for frame in s) / n
        std = float(np.sqrt(var))
        if std == 0:
            raise ValueError("Training data is constant (std 0): nothing to learn from")
        return cls(mean=mean, std=std)

    @classmethod
    def fit_anscombe(cls, stacks: Sequence[np.ndarray], gain: float | None = None, offset: float | None = None,
                     read_noise: float | None = None) -> Normalization:
        """The ``anscombe`` normalisation: the noise model estimated from consecutive frames (photon transfer, see
        :func:`estimate_noise_model`) where not given, and the scale of the stabilised frames."""
        _check_finite(stacks)
        given = {k: v for k, v in (("gain", gain), ("offset", offset), ("read_noise", read_noise)) if v is not None}
        if len(given) < 3:
            est = estimate_noise_model(stacks, gain=gain, offset=offset)
            gain = gain if gain is not None else est["gain"]
            offset = offset if offset is not None else est["offset"]
            read_noise = read_noise if read_noise is not None else est["read_noise"]
            source = (f"estimated from {est['pairs']} consecutive frame pairs (photon transfer)"
                      + (f"; given: {', '.join(sorted(given))}" if given else ""))
        else:
            source = "given"
        assert gain is not None and offset is not None and read_noise is not None
        norm = cls(kind="anscombe", mean=0.0, std=1.0, gain=gain, offset=offset, read_noise=read_noise, source=source)
        sq = sum(float((norm._stabilise(frame.astype(np.float32)).astype(np.float64) ** 2).sum())
                 for s in stacks for frame in s[:: max(1, len(s) // 16)])
        n = sum(frame.size for s in stacks for frame in s[:: max(1, len(s) // 16)])
        scale = float(np.sqrt(sq / n))
        if not scale > 0:
            raise ValueError("Training data holds no light above the camera offset: nothing to learn from")
        return norm.model_copy(update={"std": scale})

    # --- the transform --------------------------------------------------------------------------------
    def _stabilise(self, x: np.ndarray) -> np.ndarray:
        """A(x) − A(offset), float32 (anscombe only)."""
        a, o, r = np.float32(self.gain), np.float32(self.offset), np.float32(self.read_noise)
        c = np.float32(0.375) * a * a + r * r
        y = np.multiply(x, a, dtype=np.float32)
        y += c - a * o
        np.maximum(y, 0, out=y)
        np.sqrt(y, out=y)
        y *= np.float32(2.0) / a
        y -= np.float32(2.0) / a * np.sqrt(c)
        return y

    def _unstabilise(self, d: np.ndarray) -> np.ndarray:
        """The exact unbiased inverse of A (closed-form approximation, Mäkitalo & Foi 2013) of A(x) − A(offset)."""
        a, o, r = float(self.gain), float(self.offset), float(self.read_noise)  # type: ignore[arg-type]
        s = r / a  # read noise in electrons
        c = 0.375 * a * a + r * r
        z = np.asarray(d, dtype=np.float32) + np.float32(2.0 / a * math.sqrt(c))  # A(x) again, in electron units
        z = np.maximum(z, np.float32(0.8), dtype=np.float32)  # the closed form holds above ~0.8 (below: dark)
        inv_z = np.float32(1.0) / z
        k = np.float32(math.sqrt(1.5))
        e = (np.float32(0.25) * z * z + np.float32(0.25) * k * inv_z - np.float32(1.375) * inv_z * inv_z
             + np.float32(0.625) * k * inv_z * inv_z * inv_z - np.float32(0.125 + s * s))
        np.maximum(e, 0, out=e)
        return e * np.float32(a) + np.float32(o)

    def averaged(self, n: int) -> Normalization:
        """The normalisation of frames that are each the mean of ``n`` camera readouts (a confocal's line or frame
        averaging, a camera's on-board averaging): the same light with ``n`` times less photon variance and ``√n``
        times less read noise, i.e. the camera's noise model with ``gain / n`` and ``read_noise / √n``. Stabilised
        this way, an average of 4 is exactly what the network sees for a 4× exposure (the sum of the readouts), so a
        model trained on single readouts serves averaged ones. ``meanstd`` has no noise model to divide: a
        ValueError says so."""
        n = int(n)
        if n < 1:
            raise ValueError(f"expected frames averaged over n >= 1 readouts, got {n}")
        if n == 1:
            return self
        if self.kind != "anscombe":
            raise ValueError(f"expected a model with the camera's noise model (trained with data.normalization: "
                             f"anscombe) to serve frames averaged over {n} readouts, got one normalised by its "
                             "training frames' mean and std, which cannot tell an average from a single frame")
        assert self.gain is not None and self.read_noise is not None
        return self.model_copy(update={"gain": self.gain / n, "read_noise": self.read_noise / math.sqrt(n),
                                       "source": f"{self.source or 'given'}; frames averaged over {n} readouts"})

    def normalize(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "anscombe":
            return self._stabilise(np.asarray(x)) / np.float32(self.std)
        return (np.asarray(x, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)

    def denormalize(self, y: np.ndarray) -> np.ndarray:
        if self.kind == "anscombe":
            return self._unstabilise(np.asarray(y, dtype=np.float32) * np.float32(self.std))
        return np.asarray(y, dtype=np.float32) * np.float32(self.std) + np.float32(self.mean)

    @property
    def linear(self) -> bool:
        """Whether normalisation is one multiply-add per pixel (``meanstd``)."""
        return self.kind == "meanstd"

    def describe(self) -> str:
        """One line for a person."""
        if self.kind == "anscombe":
            return (f"camera noise model: gain {self.gain:.4g} ADU/e-, offset {self.offset:.4g} ADU, read noise "
                    f"{self.read_noise:.3g} ADU ({self.source or 'given'}); variance-stabilised (Anscombe)")
        return f"mean {self.mean:.4g}, std {self.std:.4g} of the training frames"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        if d.get("kind", "meanstd") not in ("meanstd", "anscombe"):
            raise ValueError(f"Expected normalisation kind 'meanstd' or 'anscombe', got {d.get('kind')!r}")
        return cls.model_validate(d)


def frame_peak(frame: np.ndarray) -> float:
    """A frame's brightness as an INT8 export sees it: the 99.5th percentile of every 4th pixel each way (robust to a
    few hot pixels; about 0.1 ms at 512²). The trainer records the checked frames' (``quantization.calibration
    .checked_peak``) and the Denoiser measures each served frame's with it."""
    sub = np.asarray(frame)[..., ::4, ::4].ravel()
    k = max(0, min(sub.size - 1, int(0.995 * sub.size)))
    return float(np.partition(sub, k)[k])


def _check_finite(stacks: Sequence[np.ndarray]) -> None:
    if not stacks:
        raise ValueError("Expected at least one stack to compute normalisation from, got none")
    for i, s in enumerate(stacks):
        if s.dtype.kind == "f" and not np.isfinite(s).all():
            raise ValueError(f"Stack {i} contains NaN or infinite values; cannot normalise")


class InputSpec(_Part):
    dtype: str | None = None
    """The camera's dtype the model was trained on (uint8, uint16, ...)."""
    shape_hint: list[int] | None = None
    """(H, W) of the training frames: the server compiles for it at start."""
    min_side: int | None = Field(None, ge=1)
    """Smallest height and width the network takes, where more than the size multiple (a zoo package's minimum)."""
    fixed_shape: list[int] | None = None
    """The only (H, W) the network takes (a zoo package whose axes have fixed sizes); null: any."""


class Tile(_Part):
    size: int = Field(2048, ge=8)
    """Frames larger than this are cut into tiles of this size."""
    overlap: int = Field(ge=0)
    """Margin shared by neighbouring tiles (>= the network's reach: no seams)."""


class Artifact(_Part):
    """An exported file of the model, checked against PyTorch (or float32) when written."""

    path: str
    """File name inside the model folder."""
    format: Literal["onnx", "torchscript", "openvino_int8"]
    sha256: str
    layout: str = "NCHW float32, normalised"
    parity_rel_error: float | None = None
    """‖exported − PyTorch‖ / ‖PyTorch‖ on a random frame."""
    opset: int | None = None
    input: str | None = None
    output: str | None = None
    weights: str | None = None
    """A second file the artifact needs (OpenVINO's .bin)."""
    weights_sha256: str | None = None

    @field_validator("path", "weights")
    @classmethod
    def _inside_the_folder(cls, v: str | None) -> str | None:
        """A file name in the model folder, never a path out of it (``../``, absolute, a sub-folder)."""
        if v is not None and (v in ("", ".", "..") or "/" in v or "\\" in v or Path(v).name != v):
            raise ValueError(f"expected a file name inside the model folder, got {v!r}")
        return v


class BrightExpert(_Part):
    """A second network in the model folder for frames much brighter than the training frames (``data.bright_expert``
    in training): the Denoiser serves with it every frame at least ``serves_from`` times as bright as the training
    frames, in float32. Itself a whole model folder (card, weights, ONNX and TorchScript exports; no INT8)."""

    path: str = "bright"
    """Its folder, inside the model folder (a plain name: never a path out of it)."""
    band: list[float] = Field(min_length=2, max_length=2)
    """The light of its training pairs, in multiples of the training frames'."""
    serves_from: float = Field(gt=1)
    """Frames at least this many times as bright as the training frames go to it."""
    reference_peak: float = Field(gt=0)
    """The training frames' brightness: their median ``frame_peak`` above the camera's offset (ADU)."""

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError(f"expected the bright network's folder as a plain name inside the model folder, got {v!r}")
        return v


class Quantization(_Part):
    """The INT8 post-training quantization (NNCF) and its quality check."""

    status: Literal["kept", "rejected", "failed", "skipped"]
    reason: str
    """Why it was kept or not, in words."""
    calibration: dict[str, Any] = Field(default_factory=dict)
    """Which frames calibrated it (the run's own training frames), how many samples."""
    check: dict[str, Any] = Field(default_factory=dict)
    """Held-out validation: MSE of float32 and INT8 output (against the reference, or the next frame with
    the noise estimate) and the loss in dB."""
    max_loss_db: float = 0.1


class ModelCard(BaseModel):
    """``model.json``. Unknown keys are refused (a typo is an error, not a silently ignored field)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    card_version: Literal[1] = CARD_VERSION
    name: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    architecture: Architecture
    size_multiple: int = Field(ge=1)
    """Frame sides divisible by this run without padding inside the network."""
    normalization: Normalization
    input: InputSpec = InputSpec()
    tile: Tile
    training: dict[str, Any] = Field(default_factory=dict)
    """Provenance: mode, data files (with sha256), config, epochs, time, device, precision."""
    metrics: dict[str, float] = Field(default_factory=dict)
    history: list[dict[str, float]] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    artifacts: dict[str, Artifact] = Field(default_factory=dict)
    quantization: Quantization | None = None
    bright_expert: BrightExpert | None = None
    """A second network for much brighter frames (see :class:`BrightExpert`); None: one network serves all."""

    _run_dir: Path | None = PrivateAttr(default=None)
    _verified: set[str] = PrivateAttr(default_factory=set)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.size_multiple != 2**self.architecture.levels:
            raise ValueError(f"size_multiple {self.size_multiple} does not match the architecture (depth "
                             f"{self.architecture.depth}, stem {self.architecture.stem}: "
                             f"{2**self.architecture.levels})")
        for key, art in self.artifacts.items():
            if key != art.format:
                raise ValueError(f"artifacts.{key} holds a {art.format!r} file; expected format {key!r}")
        return self

    # --- convenient views ---------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            raise CardError(f"model card {self.name!r} was not loaded from a folder")
        return self._run_dir

    @property
    def mean(self) -> float:
        return self.normalization.mean

    @property
    def std(self) -> float:
        return self.normalization.std

    @property
    def depth(self) -> int:
        return self.architecture.depth

    @property
    def reach(self) -> int:
        return unet_reach(self.architecture.levels)

    @property
    def input_frames(self) -> int:
        """K: frames per prediction (1 for a single-frame model and for every card older than this field)."""
        return self.architecture.input_frames

    @property
    def tile_size(self) -> int:
        return self.tile.size

    @property
    def tile_overlap(self) -> int:
        return self.tile.overlap

    @property
    def input_dtype(self) -> str | None:
        return self.input.dtype

    @property
    def shape_hint(self) -> tuple[int, int] | None:
        hint = self.input.shape_hint
        if hint is not None and len(hint) == 2 and all(v > 0 for v in hint):
            return (hint[0], hint[1])
        return None

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path) -> ModelCard:
        """Read and check ``run_dir/model.json``; errors say what was expected and what was found. A BioImage Model
        Zoo package (a ``.zip`` or its ``rdf.yaml``) is read as the model folder :mod:`streamer.core.zoo` makes
        of it."""
        from .zoo import is_package, open_package

        run_dir = Path(run_dir)
        if is_package(run_dir):
            run_dir = open_package(run_dir)
        path = run_dir / CARD_NAME
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such model folder (make one with `n2n train`)")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no model card; is {run_dir} a folder made by `n2n train`?")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CardError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("card_version") != CARD_VERSION:
            got = data.get("card_version") if isinstance(data, dict) else f"a JSON {type(data).__name__}"
            raise CardError(f"{path}: expected card_version {CARD_VERSION}, got {got!r}")
        try:
            card = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise CardError(f"{path}: malformed model card at {where}: {first['msg']}, "
                            f"got {first.get('input')!r}{more}") from None
        card._run_dir = run_dir
        return card

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Write ``model.json`` atomically (a reader never sees half a card)."""
        run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        path = run_dir / CARD_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
        tmp.replace(path)
        self._run_dir = run_dir
        return path

    def artifact(self, fmt: str, verify: bool = True) -> Path:
        """Path of an exported file (``onnx``, ``torchscript``, ``openvino_int8``), checked to exist
        and, with ``verify``, to be the file the card recorded (sha256)."""
        if fmt not in ARTIFACT_FORMATS:
            raise ValueError(f"expected an artifact format in {', '.join(ARTIFACT_FORMATS)}, got {fmt!r}")
        art = self.artifacts.get(fmt)
        path = self.run_dir / (art.path if art else DEFAULT_NAMES[fmt])
        if not path.exists() or art is None:
            hint = (f"n2n export --model {self.run_dir} --format {'int8' if fmt == 'openvino_int8' else fmt}")
            what = "is listed in the card but missing" if art else "is not in this model folder"
            raise FileNotFoundError(f"{path}: the {fmt} export {what}; make it with `{hint}`")
        if verify and fmt not in self._verified:
            for name, digest in ((art.path, art.sha256), (art.weights, art.weights_sha256)):
                if name is None:
                    continue
                file = self.run_dir / name
                if not file.exists():
                    raise FileNotFoundError(f"{file}: missing (listed in {self.run_dir / CARD_NAME})")
                got = file_digest(file)
                if digest is None or got != digest:
                    raise CardError(f"{file}: changed since the model card was written (sha256 {got[:12]}…, "
                                    f"card says {(digest or 'none')[:12]}…); re-export it with `n2n export --model "
                                    f"{self.run_dir}` or train again")
            self._verified.add(fmt)
        return path
