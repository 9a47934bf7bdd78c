"""The frame-source protocol shared by every source (simulated camera, files, Micro-Manager)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["EndOfStream", "Frame", "FrameSource", "BaseSource", "grab"]


class EndOfStream(Exception):
    """Raised by :meth:`FrameSource.read` when a finite source has no more frames."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame: 2-D pixels plus where and when it came from."""

    pixels: np.ndarray
    index: int
    timestamp_ns: int
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class FrameSource(Protocol):
    """Anything that hands out 2-D frames one after the other."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def read(self) -> Frame: ...

    def close(self) -> None: ...


class BaseSource:
    """Iteration, context management and rate limiting shared by the sources.

    Subclasses implement ``_next_frame(index) -> (pixels, metadata)``.
    ``fps`` > 0 paces :meth:`read` to that frame rate (as a camera would); 0 reads as
    fast as frames can be made.
    """

    def __init__(self, fps: float = 0.0) -> None:
        if fps < 0:
            raise ValueError(f"fps must be >= 0, got {fps}")
        self.fps = fps
        self._index = 0
        self._next_due = 0.0
        self._closed = False

    @property
    def shape(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:
        raise NotImplementedError

    def _next_frame(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        raise NotImplementedError

    def read(self) -> Frame:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if self.fps > 0:
            now = time.perf_counter()
            if self._next_due > now:
                time.sleep(self._next_due - now)
            self._next_due = max(now, self._next_due) + 1.0 / self.fps
        pixels, meta = self._next_frame(self._index)
        frame = Frame(pixels, self._index, time.time_ns(), meta)
        self._index += 1
        return frame

    def close(self) -> None:
        self._closed = True

    def __iter__(self) -> Iterator[Frame]:
        while True:
            try:
                yield self.read()
            except EndOfStream:
                return

    def __enter__(self) -> BaseSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def grab(source: FrameSource, n: int) -> np.ndarray:
    """Read ``n`` consecutive frames from ``source`` into a (n, H, W) stack."""
    if n < 1:
        raise ValueError(f"Expected at least 1 frame to grab, got {n}")
    h, w = source.shape
    stack = np.empty((n, h, w), dtype=source.dtype)
    for i in range(n):
        try:
            stack[i] = source.read().pixels
        except EndOfStream:
            raise EndOfStream(f"Source ended after {i} of {n} frames") from None
    return stack
