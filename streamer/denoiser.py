"""Frame → denoised frame around an engine: fixed normalisation, tiling, output dtype. The one Denoiser that the
live server, ``n2n denoise`` and ``n2n evaluate`` all run, so that a frame denoised live and offline is the same
frame.

The normalisation is the model card's (computed on the training data), never per-frame
statistics, so a frame's brightness is kept and the hot path is two multiply-adds.
Frames larger than the tile size are cut into tiles and stitched back without seams
(:mod:`streamer.core.tiling`).

A K-frame model (``card.input_frames`` > 1) denoises frame t from frames t−K+1 … t: the caller passes the
older frames (``previous``, oldest first; :class:`streamer.core.history.FrameHistory` keeps them per stream) and
the Denoiser repeats the oldest one it has until there are K (the first frame of a stream is denoised from
itself alone, repeated K times). A single-frame model ignores ``previous``.

Never worse than raw in silence. Each frame returned carries flags (:attr:`Denoiser.last_flags`, counted in
:attr:`Denoiser.counts`):

* ``float_path``: the frame's normalised values left the range the reduced precision (INT8) was checked on
  (``card.quantization.calibration["checked_range"]``), or its brightness (``core.card.frame_peak``) left that
  of the frames it was checked on (``checked_peak``: a brighter sample drives the network's inner activations past their
  calibrated ranges even where its pixels stay inside): it went through the float32 model instead, never a clipped
  or coarsely quantised one. Still denoised.
* ``raw:output_range``: the output departed from the input's intensity range (its mean, or its extremes beyond
  the input's), or saturated where the input did not: the raw frame is returned instead (not denoised).

A model folder with a bright network (``card.bright_expert``, trained with ``data.bright_expert``) serves each frame
whose brightness (``core.card.frame_peak`` above the camera's offset, times ``averaged``) is at least
``serves_from`` times the training frames' with it (:attr:`Denoiser.bright`, its own engine, checks and flags;
counted in :attr:`Denoiser.routed`; always in float32); the frame's flags are the bright network's.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .core.card import CardError, ModelCard, frame_peak
from .core.choices import OutputDtype
from .core.dtypes import to_dtype
from .core.tiling import TilePlan
from .engines import Engine, create_engine

__all__ = ["FLAG_FLOAT_PATH", "FLAG_RAW_OUTPUT", "Denoiser", "Timings", "is_raw"]

FLAG_FLOAT_PATH = "float_path"
"""The frame left the range its reduced precision was checked on: served by the float32 model."""
FLAG_RAW_OUTPUT = "raw:output_range"
"""The output departed from the input's intensity range or saturated: the raw frame was returned."""
OUTPUT_MEAN_TOLERANCE = 0.25
"""The output's mean may differ from the input's by this share of the input's range (denoising keeps the mean)."""
OUTPUT_EXTREME_TOLERANCE = 0.5
"""The output may exceed the input's extremes by this share of its range (denoising narrows them)."""
OUTPUT_COLLAPSE = 0.25
"""The output's maximum must reach above the bottom quarter of the input's range (and its minimum below the top
quarter): an output squeezed into one end of it lost its structures (a clipped reduced-precision network)."""


def is_raw(flags: Sequence[str]) -> bool:
    """Whether a frame with these flags was returned raw (not denoised)."""
    return any(f.startswith("raw:") for f in flags)

log = logging.getLogger("n2n.streamer")


@dataclass
class Timings:
    """Stage timestamps of one frame (ns since the epoch)."""

    start: int = 0
    preprocessed: int = 0
    inferred: int = 0
    postprocessed: int = 0


class Denoiser:
    """Normalise → (tile) → engine → (stitch) → denormalise → output dtype."""

    def __init__(self, card: ModelCard, engine: Engine, tile_size: int | None = None,
                 tile_overlap: int | None = None, output_dtype: OutputDtype | str = "same",
                 max_tiles: int | None = None, max_shapes: int | None = None,
                 max_tile_pixels: int | None = None, averaged: int = 1) -> None:
        if output_dtype not in ("same", "float32"):
            raise ValueError(f"expected output_dtype 'same' or 'float32', got {output_dtype!r}")
        self.card = card
        self.engine = engine
        self.input_frames = card.input_frames
        """K: frames per prediction (see the module docstring)."""
        self.tile_size = int(tile_size or card.tile_size)
        self.margin = int(card.tile_overlap if tile_overlap is None else tile_overlap)
        if self.margin < card.reach:
            # fewer pixels than the network's reach would leave seams; say so, but obey
            log.warning("tile overlap %d is below the U-Net's reach %d: tile borders may show", self.margin,
                        card.reach)
        self.output_dtype = output_dtype
        self.max_tiles = max_tiles
        """Tiles per engine call at most (None: all of a frame's): the engine's memory is bounded by this
        many tiles, not by the frame's area."""
        self.max_tile_pixels = max_tile_pixels
        """Pixels per engine call at most when tiling (None: no limit; at least one tile a call): the engine's
        working memory grows with the pixels of one call."""
        self.max_shapes = max_shapes
        """Frame shapes kept compiled at most (None: all): a new shape beyond it releases the least recently
        used one (its plan and what the engine compiled for it), so memory does not grow with every shape seen
        and a swap compiles at most this many."""
        self.evicted = 0
        """Frame shapes released so far (see ``max_shapes``)."""
        self.averaged = int(averaged)
        """Each frame is the mean of this many camera readouts (line or frame averaging): the card's noise model is
        divided accordingly (:meth:`streamer.core.card.Normalization.averaged`; a ValueError for a mean/std model)."""
        self.norm = card.normalization.averaged(self.averaged)
        self._scale = np.float32(1.0 / card.std)
        self._offset = np.float32(-card.mean / card.std)
        self._plans: dict[tuple[int, int], TilePlan] = {}
        self._prepared: set[tuple[tuple[int, ...], str]] = set()
        self.counts: Counter[str] = Counter()
        """Frames flagged since this Denoiser was made, by flag (see the module docstring)."""
        self.last_flags: list[tuple[str, ...]] = []
        """The flags of each frame the last call returned, in order (() : served as checked)."""
        self.check_output = True
        """Whether outputs are checked against their input (see :data:`FLAG_RAW_OUTPUT`)."""
        q = card.quantization
        rng = q.calibration.get("checked_range") if q is not None else None
        self.checked_range: tuple[float, float] | None = (float(rng[0]), float(rng[1])) if rng else None
        """Normalised values the INT8 export was checked on (None: not recorded, or no INT8)."""
        peak = q.calibration.get("checked_peak") if q is not None else None
        self.checked_peak: tuple[float, float] | None = (float(peak[0]), float(peak[1])) if peak else None
        """The normalised brightness (``core.card.frame_peak``) of the frames the INT8 export was checked on,
        dimmest to brightest."""
        self._fp32: dict[tuple[int, ...], Any] = {}
        n = self.norm
        self._noise: tuple[float, float, float] | None = (
            None if n.linear else (float(n.gain), float(n.offset), float(n.read_noise)))  # type: ignore[arg-type]
        self.bright: Denoiser | None = None
        """The bright network's Denoiser (see the module docstring), attached by :meth:`from_model_dir`."""
        self.routed = 0
        """Frames served by the bright network so far."""

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, engine: str = "auto", precision: str = "auto",
                       device: str = "auto", num_threads: int | None = None, min_psnr_db: float = 50.0,
                       tile_size: int | None = None, tile_overlap: int | None = None, output_dtype: str = "same",
                       max_tiles: int | None = None, max_shapes: int | None = None,
                       retime: bool = False, max_tile_pixels: int | None = None,
                       trust_code: bool = False, averaged: int = 1, bright: bool = True) -> Denoiser:
        """The model folder's card, an engine for it (``auto``: the first that runs here, see
        :func:`streamer.engines.create_engine`) and the pre/post-processing around it: what every user of a model
        folder (the server, ``n2n denoise``, ``n2n evaluate``) builds. ``trust_code``: run a TorchScript file this
        install did not write (``--trust-code``; :mod:`streamer.core.trust`). ``averaged``: frames are each the
        mean of this many readouts (``--averaged``)."""
        card = ModelCard.load(model_dir)
        card.normalization.averaged(averaged)  # a mean/std model refused before an engine is built
        eng = create_engine(engine, card, precision=precision, device=device, num_threads=num_threads,
                            min_psnr_db=min_psnr_db, retime=retime, trust_code=trust_code)
        den = cls(card, eng, tile_size, tile_overlap, output_dtype, max_tiles=max_tiles, max_shapes=max_shapes,
                  max_tile_pixels=max_tile_pixels, averaged=averaged)
        if card.bright_expert is not None and bright:
            # in float32 whatever the first network's precision (see _bright_folder)
            try:
                den.bright = cls.from_model_dir(cls._bright_folder(card), engine, "fp32", device, num_threads,
                                                min_psnr_db, tile_size, tile_overlap, output_dtype, max_tiles,
                                                max_shapes, retime, max_tile_pixels, trust_code, averaged, bright=False)
            except BaseException:
                eng.close()
                raise
        return den

    @staticmethod
    def _bright_folder(card: ModelCard) -> Path:
        """The folder of ``card``'s bright network: inside the model folder (never a link out of it), its card naming
        no bright network of its own. It serves in float32 whatever the first network's precision (at the light it
        serves its error is small and reduced precision's is not: bf16 cost it 0.08-0.17 dB on 100 ms frames, INT8
        0.32; docs/results.md), so that every run of a model, live, offline, resumed or swapped, serves a bright
        frame the same."""
        assert card.bright_expert is not None
        root = card.run_dir.resolve()
        folder = (card.run_dir / card.bright_expert.path).resolve()
        if not folder.is_relative_to(root) or folder == root:
            raise CardError(f"{card.run_dir / 'model.json'}: expected its bright network in a folder inside the model "
                            f"folder, got {card.bright_expert.path!r}, which leads to {folder}")
        if ModelCard.load(folder).bright_expert is not None:
            raise CardError(f"{folder / 'model.json'}: expected a bright network's card, which names no bright "
                            "network of its own, got one that does")
        return folder

    def close(self) -> None:
        """Release the engines (this network's and the bright network's)."""
        self.engine.close()
        if self.bright is not None:
            self.bright.close()

    def serves_bright(self, pixels: np.ndarray) -> bool:
        """Whether ``pixels`` (a frame, or a window whose newest frame is last) is bright enough for the bright
        network (see the module docstring)."""
        be = self.card.bright_expert
        if self.bright is None or be is None:
            return False
        newest = pixels if pixels.ndim == 2 else pixels[-1]
        light = (frame_peak(newest) - float(self.card.normalization.offset or 0.0)) * self.averaged
        return light >= be.serves_from * be.reference_peak

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Frame shapes planned so far (a model swap compiles the new model for them)."""
        return list(self._plans)

    @property
    def min_side(self) -> int:
        return max(self.card.size_multiple, self.card.input.min_side or 0)

    @property
    def fixed_shape(self) -> tuple[int, int] | None:
        """The only frame shape the model takes (a zoo package with fixed sizes), else None."""
        fixed = self.card.input.fixed_shape
        return (fixed[0], fixed[1]) if fixed else None

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """A ValueError naming what the model takes, for a frame it cannot denoise."""
        if len(shape) != 2:
            raise ValueError(f"expected a 2-D frame (height, width), got shape {shape}")
        if min(shape) < self.min_side:
            raise ValueError(f"expected height and width >= {self.min_side}, got shape {shape}")
        if self.fixed_shape is not None and tuple(shape) != self.fixed_shape:
            raise ValueError(f"expected shape {self.fixed_shape} (the only size this model takes), got {shape}")

    def plan(self, shape: tuple[int, int]) -> TilePlan:
        plan = self._plans.pop(shape, None)  # popped and put back: the most recently used is last
        if plan is None:
            plan = TilePlan.make(shape, self.tile_size, self.margin, self.card.size_multiple, self.input_frames,
                                 pads_itself=self.card.architecture.pads_input)
            if self.max_shapes is not None:
                while len(self._plans) >= self.max_shapes:
                    self._evict(next(iter(self._plans)))
        self._plans[shape] = plan
        return plan

    def _evict(self, shape: tuple[int, int]) -> None:
        old = self._plans.pop(shape)
        self._prepared = {p for p in self._prepared if p[0] != tuple(shape)}
        self._fp32 = {k: v for k, v in self._fp32.items() if tuple(k[-2:]) != tuple(shape)}
        self.engine.forget(*old.tile)
        self.evicted += 1

    def prepare(self, shape: tuple[int, int], sample: np.ndarray | None = None) -> TilePlan:
        """Compile the engine for frames of ``shape`` (a real ``sample`` frame calibrates precision), and
        its frame path for the sample's dtype (else the model card's) where the engine has one."""
        plan = self.plan(shape)
        dtype = np.dtype(sample.dtype if sample is not None else self.card.input_dtype or "float32")
        framed = self._framed(plan, dtype)
        if not (framed and self.engine.precision_decided):  # the frame path alone needs no float model
            calib = (self.preprocess(self.window(sample), plan)[: self._chunk(plan)] if sample is not None
                     else None)
            self.engine.prepare(self._engine_shape(plan), calib)
        if framed:
            self.engine.infer_frames(np.zeros(plan.batch_shape, dtype), self.card.mean, self.card.std,
                                     self._out_dtype(dtype).name, self._noise)
        self._prepared.add((tuple(shape), dtype.name))
        if self.bright is not None:  # compiled now too: the first bright frame does not wait for it
            self.bright.prepare(shape, sample)
        return plan

    def _chunk(self, plan: TilePlan) -> int:
        """Tiles per engine call for this plan: at most ``max_tiles``, and at most ``max_tile_pixels`` in all
        (one at least)."""
        n = plan.batch_shape[0]
        if self.max_tiles is not None:
            n = max(1, min(n, self.max_tiles))
        if self.max_tile_pixels is not None and plan.tiled:
            n = max(1, min(n, self.max_tile_pixels // (plan.tile[0] * plan.tile[1])))
        return n

    def _engine_shape(self, plan: TilePlan) -> tuple[int, int, int, int]:
        return (self._chunk(plan), *plan.batch_shape[1:])

    def _infer_tiles(self, batch: np.ndarray, plan: TilePlan, fp32: bool = False) -> np.ndarray:
        """The engine on a frame's tiles, ``max_tiles`` at a time (the last call padded with copies of its
        last tile, so that one compiled shape serves every call); ``fp32``: its float32 model."""
        infer = self._infer_fp32 if fp32 else self.engine.infer
        k = self._chunk(plan)
        if len(batch) <= k:
            return infer(batch)
        out = np.empty((len(batch), 1, *batch.shape[2:]), np.float32)
        for i in range(0, len(batch), k):
            part = batch[i : i + k]
            n = len(part)
            if n < k:
                part = np.concatenate([part, np.repeat(part[-1:], k - n, axis=0)])
            out[i : i + n] = infer(part)[:n]
        return out

    def _framed(self, plan: TilePlan, dtype: np.dtype) -> bool:
        """Whether frames of this plan and dtype take the engine's frame path (conversion in the engine: the
        linear normalisation only)."""
        return plan.whole and dtype.name in self.engine.frame_dtypes and (
            self.norm.linear or self.engine.frame_noise_models)

    def _out_dtype(self, dtype: np.dtype) -> np.dtype:
        return np.dtype(np.float32) if self.output_dtype == "float32" else dtype

    # --- what is served is what was checked ------------------------------------------------------------------
    @property
    def guarded(self) -> bool:
        """Whether frames are checked against the range the engine's precision was checked on (INT8 only: a
        float precision does not clip)."""
        return self.engine.precision == "int8"

    def in_checked_range(self, x: np.ndarray) -> bool:
        """Whether the camera values ``x`` (a frame or window) normalise into the INT8 export's checked range."""
        if self.checked_range is None:
            return False
        lo, hi = self.checked_range
        newest = x if x.ndim == 2 else x[-1]
        ends = self.norm.normalize(np.array([x.min(), x.max(), frame_peak(newest)], dtype=np.float32))
        inside = bool(ends[0] >= lo and ends[1] <= hi)
        if self.checked_peak is not None:
            inside = inside and self.checked_peak[0] <= ends[2] <= self.checked_peak[1]
        return inside

    def _infer_fp32(self, batch: np.ndarray) -> np.ndarray:
        """The float32 model on a normalised batch (the INT8 engine's float graph, compiled once per shape)."""
        shape = tuple(int(v) for v in batch.shape)
        compiled = self._fp32.get(shape)
        if compiled is None:
            compiled = self._fp32[shape] = self.engine._compile(shape, "fp32")  # type: ignore[arg-type]
        return self.engine._run(compiled, np.ascontiguousarray(batch, dtype=np.float32))

    def _checked_output(self, out: np.ndarray, pixels: np.ndarray, flags: list[str]) -> np.ndarray:
        """``out``, or the raw frame (flagged) where ``out`` departs from ``pixels``' intensities: its mean moved by
        a quarter of the input's range, its extremes beyond the input's by half of it, its values collapsed into
        the bottom or top quarter of the input's range (a clipped network: the brightest structures gone), a pixel
        saturated where the input has none, or a value not finite. The tolerances (plus 2% of the input's mean
        level) catch a broken output, not a denoised one: denoising keeps the mean and narrows the extremes."""
        if not self.check_output:
            return out
        lo, hi = float(pixels.min()), float(pixels.max())
        o_lo, o_hi = float(out.min()), float(out.max())
        sub = (slice(None, None, 4), slice(None, None, 4))
        mean_in = float(pixels[sub].mean(dtype=np.float64))
        span, slack = hi - lo, 0.02 * abs(mean_in)
        shift = abs(float(out[sub].mean(dtype=np.float64)) - mean_in)
        top = np.iinfo(out.dtype).max if out.dtype.kind in "iu" else None
        bad = (not (np.isfinite(o_lo) and np.isfinite(o_hi))
               or shift > OUTPUT_MEAN_TOLERANCE * span + slack
               or o_hi > hi + OUTPUT_EXTREME_TOLERANCE * span + slack
               or o_lo < lo - OUTPUT_EXTREME_TOLERANCE * span - slack
               or o_hi < lo + OUTPUT_COLLAPSE * span - slack
               or o_lo > hi - OUTPUT_COLLAPSE * span + slack
               or (top is not None and o_hi >= top and hi < top))
        if not bad:
            return out
        flags.append(FLAG_RAW_OUTPUT)
        return pixels.astype(out.dtype) if out.dtype != pixels.dtype else pixels.copy()

    def _note(self, flags: list[tuple[str, ...]]) -> None:
        self.last_flags = flags
        for fl in flags:
            self.counts.update(fl)

    def window(self, pixels: np.ndarray, previous: Sequence[np.ndarray] = ()) -> np.ndarray:
        """What the model sees for ``pixels``: the frame itself (K = 1), or frames t−K+1 … t as a (K, H, W)
        array: the last K−1 of ``previous`` (oldest first), the oldest repeated while there are fewer."""
        k = self.input_frames
        if k == 1:
            return pixels
        older = list(previous)[-(k - 1):] if k > 1 else []
        for f in older:
            if f.shape != pixels.shape or f.dtype != pixels.dtype:
                raise ValueError(f"expected previous frames of the frame's shape and dtype {pixels.shape} "
                                 f"{pixels.dtype}, got {f.shape} {f.dtype}")
        frames = [*([older[0] if older else pixels] * (k - 1 - len(older))), *older, pixels]
        return np.stack(frames)

    def preprocess(self, pixels: np.ndarray, plan: TilePlan | None = None) -> np.ndarray:
        """Normalised engine input for one frame (H, W), or one window (K, H, W) of a K-frame model."""
        plan = plan or self.plan(pixels.shape[-2:])  # type: ignore[arg-type]
        if self.norm.linear:
            x = np.multiply(pixels, self._scale, dtype=np.float32)
            x += self._offset
        else:
            x = self.norm.normalize(pixels)
        if x.ndim == 2:
            x = x[None]
        if plan.whole:
            return x[None]
        (h, w), (ph, pw) = plan.shape, plan.padded
        if (ph, pw) != (h, w):
            x = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect")
        th, tw = plan.tile
        batch = np.empty(plan.batch_shape, np.float32)
        k = 0
        for r0, _, _ in plan.rows:
            for c0, _, _ in plan.cols:
                batch[k] = x[:, r0 : r0 + th, c0 : c0 + tw]
                k += 1
        return batch

    def stitch(self, out: np.ndarray, plan: TilePlan) -> np.ndarray:
        if not plan.tiled:
            return out[0, 0, : plan.shape[0], : plan.shape[1]]
        frame = np.empty(plan.padded, np.float32)
        k = 0
        for r0, r1, r2 in plan.rows:
            for c0, c1, c2 in plan.cols:
                frame[r1:r2, c1:c2] = out[k, 0, r1 - r0 : r2 - r0, c1 - c0 : c2 - c0]
                k += 1
        h, w = plan.shape
        return frame[:h, :w]

    def postprocess(self, y: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Back to intensities; integer inputs are clipped to their range and rounded."""
        if self.norm.linear:
            y = y * np.float32(self.card.std)
            y += np.float32(self.card.mean)
        else:
            y = self.norm.denormalize(y)
        if self.output_dtype == "float32" or dtype.kind == "f":
            return y.astype(np.float32 if self.output_dtype == "float32" else dtype, copy=False)
        return to_dtype(y, dtype, inplace=True)

    def __call__(self, pixels: np.ndarray, timings: Timings | None = None,
                 previous: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Denoise one 2-D frame (any supported dtype); fills ``timings`` if given. A K-frame model also uses
        the frames before it, ``previous`` (oldest first; see :meth:`window`). Its flags: ``last_flags[0]``."""
        if self.bright is not None and self.serves_bright(pixels):
            if (pixels.shape, pixels.dtype.name) not in self._prepared:  # both networks, the shape recorded
                self.check_shape(pixels.shape)
                self.prepare(pixels.shape, pixels)  # type: ignore[arg-type]
            self.bright.check_output = self.check_output
            out = self.bright(pixels, timings, previous)
            self.routed += 1
            self._note(self.bright.last_flags)
            return out
        flags: list[str] = []
        out = self._denoise(pixels, timings, previous, flags)
        self._note([tuple(flags)])
        return out

    def _denoise(self, pixels: np.ndarray, timings: Timings | None, previous: Sequence[np.ndarray],
                 flags: list[str]) -> np.ndarray:
        self.check_shape(pixels.shape)
        t = timings or Timings()
        t.start = time.time_ns()
        plan = self.plan(pixels.shape)  # type: ignore[arg-type]
        if (pixels.shape, pixels.dtype.name) not in self._prepared:
            self.prepare(pixels.shape, pixels)  # type: ignore[arg-type]
        x = self.window(pixels, previous)
        float_path = self.guarded and not self.in_checked_range(x)
        if float_path:
            flags.append(FLAG_FLOAT_PATH)
        elif self._framed(plan, pixels.dtype):
            t.preprocessed = time.time_ns()
            out = self.engine.infer_frames(x[None, None] if x.ndim == 2 else x[None], self.card.mean,
                                           self.card.std, self._out_dtype(pixels.dtype).name, self._noise)[0, 0]
            t.inferred = time.time_ns()
            out = self._checked_output(out, pixels, flags)
            t.postprocessed = time.time_ns()
            return out
        batch = self.preprocess(x, plan)
        t.preprocessed = time.time_ns()
        out = self._infer_tiles(batch, plan, fp32=float_path)
        del batch
        if plan.tiled:  # a large frame: the engine's working memory for its tiles goes back (see Engine.release)
            self.engine.release(self._engine_shape(plan))
        t.inferred = time.time_ns()
        result = self.postprocess(self.stitch(out, plan), pixels.dtype)
        result = self._checked_output(result, pixels, flags)
        t.postprocessed = time.time_ns()
        return result

    def batch(self, frames: list[np.ndarray], timings: Timings | None = None,
              previous: Sequence[Sequence[np.ndarray]] | None = None) -> list[np.ndarray]:
        """Denoise several frames of one shape and dtype as one engine batch (each frame's output is
        what ``self(frame, previous=previous[i])`` gives at the engine's precision). Frames that need tiling
        are a batch of tiles already: they run one by one."""
        first = frames[0]
        if any(f.shape != first.shape or f.dtype != first.dtype for f in frames):
            raise ValueError("expected frames of one shape and dtype in a batch, got "
                             + ", ".join(f"{f.shape} {f.dtype}" for f in frames))
        plan = self.plan(first.shape)  # type: ignore[arg-type]
        prev: Sequence[Sequence[np.ndarray]] = previous if previous is not None else [()] * len(frames)
        if (first.shape, first.dtype.name) not in self._prepared:
            self.check_shape(first.shape)
            self.prepare(first.shape, first)  # type: ignore[arg-type]  # decides the precision on one frame
        if self.bright is not None:
            bright = [self.serves_bright(f) for f in frames]
            if all(bright):
                self.bright.check_output = self.check_output
                out_frames = self.bright.batch(frames, timings, previous)
                self.routed += len(frames)
                self._note(self.bright.last_flags)
                return out_frames
            if any(bright):  # a batch across the threshold: frame by frame, each by its network
                out_frames, all_flags = [], []
                for f, p in zip(frames, prev):
                    out_frames.append(self(f, timings, p))  # (counts its flags)
                    all_flags.extend(self.last_flags)
                self.last_flags = all_flags
                return out_frames
        k = self.input_frames
        windows = [self.window(f, p) for f, p in zip(frames, prev)] if k > 1 else frames
        if (len(frames) == 1 or not plan.whole
                or (self.guarded and not all(self.in_checked_range(w) for w in windows))):
            out_frames, all_flags = [], []
            for f, p in zip(frames, prev):
                flags: list[str] = []
                out_frames.append(self._denoise(f, timings, p, flags))
                all_flags.append(tuple(flags))
            self._note(all_flags)
            return out_frames
        self.check_shape(first.shape)
        t = timings or Timings()
        t.start = time.time_ns()
        if self._framed(plan, first.dtype):
            t.preprocessed = time.time_ns()
            stacked = np.stack(windows)[:, None] if k == 1 else np.stack(windows)
            out = self.engine.infer_frames(stacked, self.card.mean, self.card.std, self._out_dtype(first.dtype).name,
                                           self._noise)
            t.inferred = time.time_ns()
            results = [out[i, 0] for i in range(len(frames))]
        else:
            x = np.empty((len(frames), k, *first.shape), np.float32)
            for i, w in enumerate(windows):
                if self.norm.linear:
                    np.multiply(w, self._scale, out=x[i] if k > 1 else x[i, 0], dtype=np.float32)
                else:
                    x[i] = self.norm.normalize(w)
            if self.norm.linear:
                x += self._offset
            t.preprocessed = time.time_ns()
            out = self.engine.infer(x)
            t.inferred = time.time_ns()
            results = [self.postprocess(out[i, 0], first.dtype) for i in range(len(frames))]
        checked, all_flags = [], []
        for r, f in zip(results, frames):
            flags = []
            checked.append(self._checked_output(r, f, flags))
            all_flags.append(tuple(flags))
        self._note(all_flags)
        t.postprocessed = time.time_ns()
        return checked

    def info(self) -> dict[str, Any]:
        return {"model": self.card.name, "model_dir": str(self.card.run_dir), **self.engine.info(),
                "input_frames": self.input_frames,
                "tile_size": self.tile_size, "tile_overlap": self.margin, "output_dtype": self.output_dtype,
                "max_tiles": self.max_tiles, "max_shapes": self.max_shapes, "shapes_evicted": self.evicted,
                "normalization": self.norm.kind, "averaged": self.averaged,
                "checked_range": list(self.checked_range) if self.checked_range else None, "flagged": dict(self.counts),
                **({"bright": bright} if (bright := self.bright_summary()) is not None else {})}

    def bright_summary(self) -> dict[str, Any] | None:
        """The bright network as the status and the reports give it: from what brightness it serves, its engine and
        precision, and the frames it served so far (None: the model has none)."""
        be = self.card.bright_expert
        if self.bright is None or be is None:
            return None
        return {"serves_from": be.serves_from, "frames": self.routed, "engine": self.bright.engine.name,
                "precision": self.bright.engine.precision}
