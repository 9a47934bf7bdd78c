"""The frames before the current one, for a K-frame model (``input_frames`` > 1 in the model card).

A K-frame model denoises frame t from frames t−K+1 … t (causal: nothing from the future, so no added
latency). :class:`FrameHistory` keeps the last K−1 raw frames of one stream and says which of them the
current frame may use; the one rule, live (``n2n serve``: per stream, see :class:`Histories`) and offline
(``n2n evaluate``, ``n2n denoise``: along T):

* **The start.** Until K frames of the stream have arrived, the oldest one is repeated (the first frame is
  denoised from itself alone, K times): no frame is ever held back or dropped for want of history. Training
  uses the same windows at the start of every stack (trainer/pairs.py), so the model has seen them.
* **A break resets the history** (the next frame starts again as the first), counted by reason: ``seq_gap``
  (the sender's sequence number is not the last one plus 1: frames were lost), ``shape`` or ``dtype`` (another
  acquisition), ``swap`` (another model), ``evicted`` (a server forgot an idle stream).
* **Motion, per frame.** Frames of a moving sample do not line up, and a K-frame model then blurs or ghosts.
  Before a frame is denoised with older frames, it is compared with the oldest of them
  (:func:`motion_score`): the difference of two frames of a still sample is noise, independent from pixel to
  pixel, so averaging it over 4×4 blocks divides its variance by 16; structure that moved does not average
  away. The ratio ``16 · var(block means of the difference) / var(difference)`` is about 1 for a still
  sample and grows with motion; above ``motion_threshold`` this frame is denoised from itself alone (the
  start rule: the model's single-frame answer), counted as a motion fallback. The history itself is kept, so
  the decision depends only on the frames in the window: offline (random access to the planes) it is the
  same as live (:func:`causal_previous`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable

import numpy as np

__all__ = ["MOTION_BLOCK", "MOTION_THRESHOLD", "FrameHistory", "Histories", "causal_previous", "motion_score"]

MOTION_BLOCK = 4
MOTION_THRESHOLD: float | None = 1.25
"""Default: reset the history when :func:`motion_score` exceeds this (None: no motion check)."""


def motion_score(a: np.ndarray, b: np.ndarray, block: int = MOTION_BLOCK) -> float:
    """``block² · var(block means of a − b) / var(a − b)``: about 1 when ``a`` and ``b`` differ by pixel-wise
    independent noise only, larger when structure moved (or changed) between them. Computed on one band of
    ``block`` rows in every ``2·block`` (half the pixels, spread over the whole frame: under 1 ms at 512² on 2
    CPU cores). The threshold (1.25) sits between still FMD confocal frames (at most 1.19 over fields 1–6, frame
    pairs 1 and 2 apart) and the simulated camera drifting 2 px/frame at 5 ms exposure (at least 1.29 for
    frames 1 apart); a camera whose noise is correlated between neighbouring pixels scores higher when still."""
    h, w = a.shape
    band = 2 * block
    w = (w // block) * block
    if h < band or w == 0:
        return 1.0
    bands = h // band
    rows = (slice(None), slice(0, block), slice(0, w))
    d = np.subtract(a[: bands * band].reshape(bands, band, -1)[rows], b[: bands * band].reshape(bands, band, -1)[rows],
                    dtype=np.float32)
    total = float(d.var())
    if total <= 0:
        return 1.0
    means = d.reshape(bands, block, w // block, block).mean(axis=(1, 3))
    return float(means.var()) * block * block / total


def moved(pixels: np.ndarray, previous: list[np.ndarray], threshold: float | None) -> bool:
    """Whether ``pixels`` moved against the oldest of ``previous`` by the motion check (never without either)."""
    return bool(previous) and threshold is not None and motion_score(pixels, previous[0]) > threshold


def causal_previous(pixels: np.ndarray, previous: list[np.ndarray],
                    threshold: float | None = MOTION_THRESHOLD) -> list[np.ndarray]:
    """The rule for one frame, given the frames before it in its stream since the last break (oldest first,
    at most K−1): those frames, or none when the frame moved against the oldest of them."""
    return [] if moved(pixels, previous, threshold) else previous


class FrameHistory:
    """The last K−1 raw frames of one stream, oldest first (see the module docstring).

    For each frame, in arrival order: :meth:`previous` (what it may be denoised with; checks for a break and
    for motion), then :meth:`push` (it becomes history for the next); :meth:`advance` does both. A frame that is
    not denoised (live mode dropped it) is still pushed: :meth:`skip`. ``on_reset`` is called with the reason of
    every reset, ``on_motion`` at every motion fallback."""

    def __init__(self, frames: int, motion_threshold: float | None = MOTION_THRESHOLD,
                 on_reset: Callable[[str], None] | None = None, on_motion: Callable[[], None] | None = None) -> None:
        if frames < 1:
            raise ValueError(f"expected input frames >= 1, got {frames}")
        self.frames = frames
        self.motion_threshold = motion_threshold
        self.on_reset = on_reset
        self.on_motion = on_motion
        self._held: deque[np.ndarray] = deque(maxlen=frames - 1)
        self._last_seq: int | None = None
        self._key: tuple[tuple[int, ...], str] | None = None
        self.resets: Counter[str] = Counter()
        self.short = 0
        """Frames denoised with fewer than K−1 frames before them (the oldest repeated)."""
        self.motion_fallbacks = 0
        """Frames denoised from themselves alone because they moved against their history."""

    def __len__(self) -> int:
        return len(self._held)

    def reset(self, reason: str) -> None:
        """Forget the frames held (counted under ``reason`` when there were any, or a frame had been seen)."""
        if self._held or self._key is not None:
            self.resets[reason] += 1
            if self.on_reset is not None:
                self.on_reset(reason)
        self._held.clear()
        self._last_seq = None
        self._key = None

    def _continuity(self, pixels: np.ndarray, seq: int | None) -> None:
        if self._key is None:
            return
        shape, dtype = self._key
        if pixels.shape != shape:
            self.reset("shape")
        elif pixels.dtype.name != dtype:
            self.reset("dtype")
        elif seq is not None and self._last_seq is not None and seq != self._last_seq + 1:
            self.reset("seq_gap")

    def previous(self, pixels: np.ndarray, seq: int | None = None, check_motion: bool = True) -> list[np.ndarray]:
        """The frames before ``pixels`` to denoise it with (oldest first, at most K−1; fewer at the start of the
        stream or after a reset)."""
        if self.frames == 1:
            return []
        self._continuity(pixels, seq)
        held = list(self._held)
        if check_motion and moved(pixels, held, self.motion_threshold):
            self.motion_fallbacks += 1
            if self.on_motion is not None:
                self.on_motion()
            return []
        if len(held) < self.frames - 1:
            self.short += 1
        return held

    def push(self, pixels: np.ndarray, seq: int | None = None) -> None:
        """``pixels`` becomes the newest frame of the history."""
        if self.frames == 1:
            return
        self._held.append(pixels)
        self._last_seq = seq
        self._key = (tuple(pixels.shape), pixels.dtype.name)

    def advance(self, pixels: np.ndarray, seq: int | None = None) -> list[np.ndarray]:
        """One frame in arrival order: :meth:`previous` (what to denoise it with), then :meth:`push` (it becomes
        history for the next)."""
        previous = self.previous(pixels, seq)
        self.push(pixels, seq)
        return previous

    def skip(self, pixels: np.ndarray, seq: int | None = None) -> None:
        """A frame that arrived but is not denoised (live mode dropped it): checked for a break, then kept."""
        if self.frames == 1:
            return
        self._continuity(pixels, seq)
        self.push(pixels, seq)


class Histories:
    """A :class:`FrameHistory` per stream (the server's), at most ``max_streams``: a new stream beyond them
    forgets the least recently seen one (counted as ``evicted``)."""

    def __init__(self, frames: int, motion_threshold: float | None = MOTION_THRESHOLD, max_streams: int = 64,
                 on_reset: Callable[[str], None] | None = None, on_motion: Callable[[], None] | None = None) -> None:
        self.frames = frames
        self.motion_threshold = motion_threshold
        self.max_streams = max_streams
        self.on_reset = on_reset
        self.on_motion = on_motion
        self._streams: OrderedDict[str, FrameHistory] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, key: str) -> FrameHistory:
        hist = self._streams.pop(key, None)
        if hist is None:
            while len(self._streams) >= self.max_streams:
                self._streams.popitem(last=False)[1].reset("evicted")
            hist = FrameHistory(self.frames, self.motion_threshold, self.on_reset, self.on_motion)
        self._streams[key] = hist  # most recently seen last
        return hist

    def reset_all(self, reason: str, frames: int | None = None) -> None:
        """Reset every stream (a swap); ``frames``: the new model's K."""
        for hist in self._streams.values():
            hist.reset(reason)
        self._streams.clear()
        if frames is not None:
            self.frames = frames
