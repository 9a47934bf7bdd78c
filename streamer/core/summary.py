"""Figures over samples: percentiles, a summary, events per second over a window."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

__all__ = ["RateMeter", "percentiles", "summary"]


def percentiles(values: Any, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` of ``values`` (None when there are none)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {f"p{q:g}": None for q in qs}
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(arr, qs))}


def summary(values: Any) -> dict[str, Any]:
    """``{"p50", "p95", "p99", "mean", "n"}`` of ``values`` (the percentiles and the mean None when there are none)."""
    arr = np.asarray(list(values), dtype=np.float64)
    return {**percentiles(arr), "mean": float(arr.mean()) if arr.size else None, "n": int(arr.size)}


class RateMeter:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self.created = time.monotonic()
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None, n: int = 1) -> None:
        now = time.monotonic() if now is None else now
        self._times.extend([now] * n)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        """Events in the window divided by the window (or by the meter's age while younger)."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        return len(self._times) / max(min(self.window_s, now - self.created), 1e-3)
