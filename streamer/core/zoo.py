"""A BioImage Model Zoo package (https://bioimage.io, a ``.zip`` or its ``rdf.yaml``) as a model folder: what lets
``n2n serve``, ``n2n denoise`` and ``n2n evaluate`` take ``--model PACKAGE.zip``.

:func:`open_package` reads the package with ``bioimageio.spec`` (any format version it converts to 0.5), checks that
it is a 2-D image-to-image model that the Denoiser can run, and writes a model folder for it: its ONNX and
TorchScript weights and a model card built from its description. The folder lies in the cache
(``$N2N_CACHE_DIR``, else ``$XDG_CACHE_HOME/n2n-live``, else ``~/.cache/n2n-live``) under the package's sha256, so a
package is unpacked once and a changed package is a new folder. A package it cannot serve is refused in one line
that says why: its axes, its weights formats, or a processing step the server does not do.

What maps onto the card: one input and one output with axes batch, channel, y, x (pytorch's order); the input's
channels are one frame, or K consecutive frames where the package says so (``config.n2n_live.input_frames``, as
``n2n export --format bioimageio`` writes); the spatial sizes' step is the size multiple and the output's halo
(if any) the tile overlap; the pre-processing must be fixed affine (``fixed_zero_mean_unit_variance``,
``scale_linear``, ``ensure_dtype``: the card's mean and std) and the post-processing its exact inverse, because
the server normalises every frame of a stream the same way (never by its own statistics). Per-image
normalisation (``zero_mean_unit_variance``, ``scale_range``), ``scale_mean_variance``, ``clip``, ``binarize``,
``sigmoid`` are refused.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .card import (
    CARD_NAME,
    ONNX_NAME,
    TORCHSCRIPT_NAME,
    Architecture,
    Artifact,
    CardError,
    InputSpec,
    ModelCard,
    Normalization,
    Tile,
    file_digest,
    unet_reach,
)

__all__ = ["CONFIG_KEY", "TEST_INPUT_ID", "TEST_OUTPUT_ID", "ZooError", "cache_dir", "is_package", "open_package",
           "spec_files_closed"]

CONFIG_KEY = "n2n_live"
"""The package's ``config`` section that n2n-live writes and reads (``input_frames``, the model card)."""
TEST_INPUT_ID = "raw"
TEST_OUTPUT_ID = "denoised"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
EPS = 1e-6
"""bioimageio.core's ``fixed_zero_mean_unit_variance`` divides by ``std + eps`` with this eps."""


@contextlib.contextmanager
def spec_files_closed() -> Iterator[None]:
    """bioimageio.spec 0.5.12 leaves the files it reads open for the garbage collector; collect them here, where
    their ResourceWarnings are known and silenced, rather than at a random later moment."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


class ZooError(CardError):
    """A zoo package that cannot be read, or that describes a model n2n-live cannot serve (the message says why)."""


def is_package(path: str | Path) -> bool:
    """A zoo package rather than a model folder: a ``.zip``, an ``rdf.yaml`` / ``*.bioimageio.yaml``, or a folder
    with one of those (a package unpacked; ours carries its ``model.json`` too, but a model folder has no rdf)."""
    p = Path(path)
    if p.is_dir():
        return any((p / n).exists() for n in RDF_NAMES)
    return p.suffix == ".zip" or p.name in RDF_NAMES or p.name.endswith(".bioimageio.yaml")


def cache_dir() -> Path:
    env = os.environ.get("N2N_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "n2n-live"


def _source(path: Path) -> tuple[Path, str]:
    """The file bioimageio.spec opens, and a digest of the package's content (the zip, or the rdf and its folder)."""
    if path.is_dir():
        path = next(path / n for n in RDF_NAMES if (path / n).exists())
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such zoo package")
    if path.suffix == ".zip":
        return path, file_digest(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.parent.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path.parent)).encode() + b"\0" + file_digest(f).encode())
    return path, h.hexdigest()


def _affine(ops: list[Any], where: str, allowed: tuple[str, ...]) -> tuple[float, float]:
    """The processing ops as one ``a·x + b``, or a ZooError naming the op that is not a fixed affine map."""
    a, b = 1.0, 0.0
    for op in ops:
        kind = op.id
        if kind == "ensure_dtype":
            if op.kwargs.dtype not in ("float32", "float64"):
                raise ZooError(f"{where}: ensure_dtype to {op.kwargs.dtype}: expected float32 tensors")
            continue
        if kind not in allowed:
            per_image = kind in ("zero_mean_unit_variance", "scale_range", "scale_mean_variance")
            why = ("normalises each image by its own statistics; the server keeps one fixed normalisation for a "
                   "stream (a frame keeps its brightness)") if per_image else "is not a fixed linear map"
            raise ZooError(f"{where}: {kind} {why}; supported: {', '.join(allowed)} (and ensure_dtype)")
        kw = op.kwargs
        if getattr(kw, "axis", None) is not None:
            vals = [*(kw.mean if kind.startswith("fixed") else kw.gain)]
            if len(vals) != 1:
                raise ZooError(f"{where}: {kind} along axis {kw.axis} with {len(vals)} values: expected one channel")
        if kind == "fixed_zero_mean_unit_variance":
            mean, std = (kw.mean, kw.std) if not isinstance(kw.mean, list) else (kw.mean[0], kw.std[0])
            g, o = 1.0 / (float(std) + EPS), -float(mean) / (float(std) + EPS)
        else:  # scale_linear
            gain, offset = kw.gain, kw.offset
            g = float(gain[0] if isinstance(gain, list) else gain)
            o = float(offset[0] if isinstance(offset, list) else offset)
        a, b = g * a, g * b + o
    return a, b


def _spatial(axis: Any, where: str) -> tuple[int, int]:
    """(min, step) of a spatial input axis; a fixed size is (size, 0)."""
    size = axis.size
    if isinstance(size, int):
        return size, 0
    if not hasattr(size, "step"):
        raise ZooError(f"{where}: axis {axis.id}'s size refers to another tensor; expected a fixed size or min and "
                       "step")
    return int(size.min), max(1, int(size.step))


def card_from_description(descr: Any, source: Path) -> tuple[ModelCard, dict[str, Any]]:
    """The model card for a zoo model description, and the weights entries to unpack (by our format name); a
    ZooError when the model is not a 2-D, one-output image-to-image model with ONNX or TorchScript weights."""
    name = descr.name
    where = f"{source.name} ({name})"
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ZooError(f"{where}: expected one input and one output tensor, got {len(descr.inputs)} input(s) and "
                       f"{len(descr.outputs)} output(s)")
    inp, outp = descr.inputs[0], descr.outputs[0]
    types = [a.type for a in inp.axes]
    out_types = [a.type for a in outp.axes]
    if types != ["batch", "channel", "space", "space"] or [str(a.id) for a in inp.axes[2:]] != ["y", "x"]:
        ids = ",".join(str(a.id) for a in inp.axes)
        raise ZooError(f"{where}: input axes {ids}: expected batch, channel, y, x (a 2-D model in pytorch's order)")
    if out_types != ["batch", "channel", "space", "space"] or [str(a.id) for a in outp.axes[2:]] != ["y", "x"]:
        ids = ",".join(str(a.id) for a in outp.axes)
        raise ZooError(f"{where}: output axes {ids}: expected batch, channel, y, x")
    ours = (descr.config.model_dump() if hasattr(descr.config, "model_dump") else dict(descr.config or {}))
    ours = ours.get(CONFIG_KEY) or {}
    k = int(ours.get("input_frames", 1))
    channels = len(inp.axes[1].channel_names)
    if channels != k:
        raise ZooError(f"{where}: the input has {channels} channels: expected 1 (one frame)"
                       + (f" or the {k} frames its config.{CONFIG_KEY}.input_frames declares" if k > 1 else
                          f", or K consecutive frames declared as config.{CONFIG_KEY}.input_frames: K"))
    if len(outp.axes[1].channel_names) != 1:
        raise ZooError(f"{where}: the output has {len(outp.axes[1].channel_names)} channels: expected 1")
    for ax in outp.axes[2:]:
        ref = getattr(ax.size, "tensor_id", None)
        same_fixed = isinstance(ax.size, int) and ax.size == next(a for a in inp.axes if a.id == ax.id).size
        if not same_fixed and (ref != inp.id or str(getattr(ax.size, "axis_id", "")) != str(ax.id)
                               or getattr(ax.size, "offset", 0)):
            raise ZooError(f"{where}: output axis {ax.id} is not the input's size: expected an image-to-image model")
        if getattr(ax, "scale", 1.0) != getattr(next(a for a in inp.axes if a.id == ax.id), "scale", 1.0):
            raise ZooError(f"{where}: output axis {ax.id} has another scale than the input's")
    (min_y, step_y), (min_x, step_x) = (_spatial(a, where) for a in inp.axes[2:])
    fixed = [min_y, min_x] if step_y == step_x == 0 else None
    step = max(step_y, step_x, 1)
    if fixed is None and (step & (step - 1) or step_y != step_x):
        raise ZooError(f"{where}: spatial size steps {step_y}×{step_x}: expected one power of two for both axes "
                       "(or fixed sizes for both)")
    levels = int(math.log2(step))
    halo = max(int(getattr(a, "halo", 0) or 0) for a in outp.axes[2:])
    a, b = _affine(list(inp.preprocessing), f"{where}: pre-processing",
                   ("fixed_zero_mean_unit_variance", "scale_linear"))
    c, d = _affine(list(outp.postprocessing), f"{where}: post-processing",
                   ("scale_linear", "fixed_zero_mean_unit_variance"))
    if a <= 0:
        raise ZooError(f"{where}: pre-processing scales by {a:g}: expected a positive scale")
    std, mean = 1.0 / a, -b / a
    if not (math.isclose(c, std, rel_tol=1e-5) and math.isclose(d, mean, rel_tol=1e-5, abs_tol=1e-6 * std)):
        raise ZooError(f"{where}: post-processing maps y to {c:.6g}·y + {d:.6g}: expected the inverse of the "
                       f"pre-processing ({std:.6g}·y + {mean:.6g}), as a denoiser's output is in the input's units")
    weights = {}
    if descr.weights.onnx is not None:
        weights["onnx"] = descr.weights.onnx
    if descr.weights.torchscript is not None:
        weights["torchscript"] = descr.weights.torchscript
    if not weights:
        have = [f for f in ("pytorch_state_dict", "keras_hdf5", "keras_v3", "tensorflow_saved_model_bundle",
                            "tensorflow_js") if getattr(descr.weights, f, None) is not None]
        raise ZooError(f"{where}: weights {', '.join(have) or 'none'}: n2n-live runs onnx or torchscript weights; "
                       "convert them first (docs/zoo.md: bioimageio.core's weight converters)")
    card_src = ours.get("card") or {}
    test_shape = [int(s) for s in _test_shape(inp)]
    arch = Architecture(name="bioimageio", depth=levels, base_filters=1, input_frames=k, pads_input=False)
    spec = InputSpec(dtype=(card_src.get("input") or {}).get("dtype"), shape_hint=fixed or test_shape[-2:] or None,
                     min_side=None if fixed or max(min_y, min_x) <= step else max(min_y, min_x), fixed_shape=fixed)
    tile = Tile(size=max(fixed) if fixed else 2048, overlap=max(halo, unet_reach(levels)))
    try:  # our own package: the card it was made from describes the network (it pads, its reach, its tiling)
        theirs = Architecture.model_validate(card_src["architecture"])
        if theirs.input_frames == k and 2 ** theirs.levels == step and fixed is None:
            arch, tile = theirs, Tile.model_validate(card_src["tile"])
            spec = InputSpec.model_validate(card_src.get("input") or {})
    except (KeyError, TypeError, ValueError):
        pass
    norm = Normalization(mean=mean, std=std)
    try:  # our own package: the card's figures exactly (the zoo's std carries bioimageio.core's eps of 1e-6)
        theirs_norm = Normalization.model_validate(card_src["normalization"])
        if math.isclose(theirs_norm.std + EPS, std, rel_tol=1e-9) and math.isclose(theirs_norm.mean, mean,
                                                                                   rel_tol=1e-9, abs_tol=1e-9):
            norm = theirs_norm
    except (KeyError, TypeError, ValueError):
        pass
    card = ModelCard(
        name=card_src.get("name") or name,
        architecture=arch,
        size_multiple=2 ** arch.levels,
        normalization=norm,
        input=spec,
        tile=tile,
        training={"source": "bioimageio", "package": str(source), "name": name,
                  "id": str(getattr(descr, "id", "") or ""), "authors": [a.name for a in descr.authors],
                  **({"n2n_live": card_src.get("training")} if card_src.get("training") else {})},
        metrics={k_: float(v) for k_, v in (card_src.get("metrics") or {}).items()},
        versions={"bioimageio_format": str(descr.format_version)},
    )
    return card, weights


def _test_shape(inp: Any) -> list[int]:
    try:
        from bioimageio.spec.utils import load_array
        return list(load_array(inp.test_tensor).shape)
    except Exception:
        return []


def _copy(reader: Any, target: Path, chunk: int = 1 << 22) -> None:
    with open(target, "wb") as f:
        while block := reader.read(chunk):
            f.write(block)


def open_package(path: str | Path) -> Path:
    """The model folder for a zoo package (made on first use, then found in the cache); see the module docstring."""
    with spec_files_closed():
        try:
            return _open_package(path)
        except ZooError as exc:  # raised again below: its traceback would keep the package's open files alive
            message = str(exc)
    raise ZooError(message)


def _open_package(path: str | Path) -> Path:
    try:
        from bioimageio.spec import InvalidDescr, load_model_description
        from bioimageio.spec.utils import get_reader
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ZooError("reading a BioImage Model Zoo package needs bioimageio.spec: pip install bioimageio.core") \
            from None
    path = Path(path)
    src, digest = _source(path)
    folder = cache_dir() / "zoo" / f"{src.stem if src.suffix == '.zip' else src.parent.name}-{digest[:16]}"
    if (folder / CARD_NAME).exists():
        return folder
    try:
        descr = load_model_description(src, perform_io_checks=True, format_version="latest")
    except ValueError as exc:  # bioimageio.spec's words, first line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ZooError(f"{src}: not a valid zoo model package ({'; '.join(lines[1:3]) or lines[0]})") from None
    if isinstance(descr, InvalidDescr) or getattr(descr, "type", None) != "model":
        errors = [e for e in getattr(descr.validation_summary, "errors", [])]
        first = (f"{'.'.join(map(str, errors[0].loc))}: {errors[0].msg}" if errors else
                 f"a {getattr(descr, 'type', '?')} description, not a model")
        raise ZooError(f"{src}: not a valid zoo model package ({first})")
    card, weights = card_from_description(descr, src)
    part = folder.with_name(f"{folder.name}.part-{os.getpid()}")  # one per process: Dask workers may race here
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    arts = {}
    for fmt, entry in weights.items():
        target = part / (ONNX_NAME if fmt == "onnx" else TORCHSCRIPT_NAME)
        _copy(get_reader(entry.source), target)
        extra = getattr(entry, "external_data", None)  # ONNX weights beside the graph, under the name it records
        data = part / Path(str(extra.source)).name if extra is not None else None
        if extra is not None and data is not None:
            _copy(get_reader(extra.source), data)
        arts[fmt] = Artifact(path=target.name, format=fmt, sha256=file_digest(target),
                             opset=getattr(entry, "opset_version", None),
                             layout=f"N{card.input_frames}HW float32, normalised",
                             weights=data.name if data else None, weights_sha256=file_digest(data) if data else None)
    card.artifacts = arts
    card.save(part)
    (part / "package.json").write_text(json.dumps({"package": str(src), "sha256": digest}, indent=2) + "\n")
    if folder.exists() and not (folder / CARD_NAME).exists():
        shutil.rmtree(folder, ignore_errors=True)  # not one of ours: made complete or not at all
    try:
        part.replace(folder)
    except OSError:
        if not (folder / CARD_NAME).exists():
            raise
        shutil.rmtree(part, ignore_errors=True)  # another process unpacked it first: the same files
    return folder
