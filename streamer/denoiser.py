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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .core.card import ModelCard
from .core.choices import OutputDtype
from .core.dtypes import to_dtype
from .core.tiling import TilePlan
from .engines import Engine, create_engine

__all__ = ["Denoiser", "Timings"]

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
                 max_tiles: int | None = None, max_shapes: int | None = None) -> None:
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
        self.max_shapes = max_shapes
        """Frame shapes kept compiled at most (None: all): a new shape beyond it releases the least recently
        used one (its plan and what the engine compiled for it), so memory does not grow with every shape seen
        and a swap compiles at most this many."""
        self.evicted = 0
        """Frame shapes released so far (see ``max_shapes``)."""
        self._scale = np.float32(1.0 / card.std)
        self._offset = np.float32(-card.mean / card.std)
        self._plans: dict[tuple[int, int], TilePlan] = {}
        self._prepared: set[tuple[tuple[int, ...], str]] = set()

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, engine: str = "auto", precision: str = "auto",
                       device: str = "auto", num_threads: int | None = None, min_psnr_db: float = 50.0,
                       tile_size: int | None = None, tile_overlap: int | None = None, output_dtype: str = "same",
                       max_tiles: int | None = None, max_shapes: int | None = None) -> Denoiser:
        """The model folder's card, an engine for it (``auto``: the first that runs here, see
        :func:`streamer.engines.create_engine`) and the pre/post-processing around it: what every user of a model
        folder (the server, ``n2n denoise``, ``n2n evaluate``) builds."""
        card = ModelCard.load(model_dir)
        eng = create_engine(engine, card, precision=precision, device=device, num_threads=num_threads,
                            min_psnr_db=min_psnr_db)
        return cls(card, eng, tile_size, tile_overlap, output_dtype, max_tiles=max_tiles, max_shapes=max_shapes)

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
                                     self._out_dtype(dtype).name)
        self._prepared.add((tuple(shape), dtype.name))
        return plan

    def _chunk(self, plan: TilePlan) -> int:
        """Tiles per engine call for this plan."""
        n = plan.batch_shape[0]
        return n if self.max_tiles is None else max(1, min(n, self.max_tiles))

    def _engine_shape(self, plan: TilePlan) -> tuple[int, int, int, int]:
        return (self._chunk(plan), *plan.batch_shape[1:])

    def _infer_tiles(self, batch: np.ndarray, plan: TilePlan) -> np.ndarray:
        """The engine on a frame's tiles, ``max_tiles`` at a time (the last call padded with copies of its
        last tile, so that one compiled shape serves every call)."""
        k = self._chunk(plan)
        if len(batch) <= k:
            return self.engine.infer(batch)
        out = np.empty((len(batch), 1, *batch.shape[2:]), np.float32)
        for i in range(0, len(batch), k):
            part = batch[i : i + k]
            n = len(part)
            if n < k:
                part = np.concatenate([part, np.repeat(part[-1:], k - n, axis=0)])
            out[i : i + n] = self.engine.infer(part)[:n]
        return out

    def _framed(self, plan: TilePlan, dtype: np.dtype) -> bool:
        """Whether frames of this plan and dtype take the engine's frame path (conversion in the engine)."""
        return plan.whole and dtype.name in self.engine.frame_dtypes

    def _out_dtype(self, dtype: np.dtype) -> np.dtype:
        return np.dtype(np.float32) if self.output_dtype == "float32" else dtype

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
        x = np.multiply(pixels, self._scale, dtype=np.float32)
        x += self._offset
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
        y = y * np.float32(self.card.std)
        y += np.float32(self.card.mean)
        if self.output_dtype == "float32" or dtype.kind == "f":
            return y.astype(np.float32 if self.output_dtype == "float32" else dtype, copy=False)
        return to_dtype(y, dtype, inplace=True)

    def __call__(self, pixels: np.ndarray, timings: Timings | None = None,
                 previous: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Denoise one 2-D frame (any supported dtype); fills ``timings`` if given. A K-frame model also uses
        the frames before it, ``previous`` (oldest first; see :meth:`window`)."""
        self.check_shape(pixels.shape)
        t = timings or Timings()
        t.start = time.time_ns()
        plan = self.plan(pixels.shape)  # type: ignore[arg-type]
        if (pixels.shape, pixels.dtype.name) not in self._prepared:
            self.prepare(pixels.shape, pixels)  # type: ignore[arg-type]
        x = self.window(pixels, previous)
        if self._framed(plan, pixels.dtype):
            t.preprocessed = time.time_ns()
            out = self.engine.infer_frames(x[None, None] if x.ndim == 2 else x[None], self.card.mean,
                                           self.card.std, self._out_dtype(pixels.dtype).name)[0, 0]
            t.inferred = t.postprocessed = time.time_ns()
            return out
        batch = self.preprocess(x, plan)
        t.preprocessed = time.time_ns()
        out = self._infer_tiles(batch, plan)
        t.inferred = time.time_ns()
        result = self.postprocess(self.stitch(out, plan), pixels.dtype)
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
        if len(frames) == 1 or not plan.whole:
            return [self(f, timings, p) for f, p in zip(frames, prev)]
        self.check_shape(first.shape)
        t = timings or Timings()
        t.start = time.time_ns()
        if (first.shape, first.dtype.name) not in self._prepared:
            self.prepare(first.shape, first)  # type: ignore[arg-type]  # decides the precision on one frame
        k = self.input_frames
        if self._framed(plan, first.dtype):
            t.preprocessed = time.time_ns()
            stacked = (np.stack(frames)[:, None] if k == 1 else
                       np.stack([self.window(f, p) for f, p in zip(frames, prev)]))
            out = self.engine.infer_frames(stacked, self.card.mean, self.card.std, self._out_dtype(first.dtype).name)
            t.inferred = t.postprocessed = time.time_ns()
            return [out[i, 0] for i in range(len(frames))]
        x = np.empty((len(frames), k, *first.shape), np.float32)
        for i, (f, p) in enumerate(zip(frames, prev)):
            np.multiply(self.window(f, p), self._scale, out=x[i] if k > 1 else x[i, 0], dtype=np.float32)
        x += self._offset
        t.preprocessed = time.time_ns()
        out = self.engine.infer(x)
        t.inferred = time.time_ns()
        results = [self.postprocess(out[i, 0], first.dtype) for i in range(len(frames))]
        t.postprocessed = time.time_ns()
        return results

    def info(self) -> dict[str, Any]:
        return {"model": self.card.name, "model_dir": str(self.card.run_dir), **self.engine.info(),
                "input_frames": self.input_frames,
                "tile_size": self.tile_size, "tile_overlap": self.margin, "output_dtype": self.output_dtype,
                "max_tiles": self.max_tiles, "max_shapes": self.max_shapes, "shapes_evicted": self.evicted}
