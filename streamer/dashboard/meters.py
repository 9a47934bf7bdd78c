"""This machine's load for the dashboard: CPU from ``/proc/stat``, GPU through NVML when ``pynvml`` is there."""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["CpuMeter", "GpuMeter"]


class CpuMeter:
    """Whole-machine CPU busy percentage from the deltas of ``/proc/stat``: the first call already measures, since
    the meter was made (its baseline); each later one since the call before. Where there is no figure,
    :attr:`why_not` says why in words."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self.why_not: str | None = None
        """Why the last :meth:`percent` gave None (None after a figure)."""
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        """(total, idle) jiffies, None when unreadable (:attr:`why_not` says why)."""
        try:
            with open(self.path) as f:
                fields = f.readline().split()
        except FileNotFoundError:
            self.why_not = f"unknown here (no {self.path}: not Linux?)"
            return None
        except OSError as exc:
            self.why_not = f"unknown ({self.path} unreadable: {exc.strerror or type(exc).__name__})"
            return None
        try:
            if len(fields) < 5 or fields[0] != "cpu":
                raise ValueError(fields[:1])
            # user nice system idle iowait irq softirq steal (guest time is already in user)
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            self.why_not = f"unknown ({self.path} has no 'cpu' line of numbers first)"
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    def percent(self) -> float | None:
        """Busy % since the previous call (the first: since the meter was made); None where it cannot be
        measured (:attr:`why_not`)."""
        now = self._read()
        last, self._last = self._last, now
        if now is None:
            return None
        if last is None:
            self.why_not = "measuring (the next reading is the first figure)"
            return None
        total, idle = now[0] - last[0], now[1] - last[1]
        if total <= 0:
            self._last = last  # under a clock tick (10 ms of all cores): measure from the same baseline
            self.why_not = "measuring (under a clock tick so far)"
            return None
        self.why_not = None
        return max(0.0, min(100.0, 100.0 * (total - idle) / total))


class GpuMeter:
    """GPU utilisation and memory through NVML when ``pynvml`` is importable; otherwise nothing."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False

    def _init(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                with warnings.catch_warnings():  # some pynvml releases warn on import
                    warnings.simplefilter("ignore")
                    import pynvml  # type: ignore[import-not-found]

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:
                self._nvml = None
        return self._nvml

    def read(self) -> str | None:
        """E.g. ``GPU 45 % 1.2/79.6 GiB`` (each GPU), None without NVML or a GPU."""
        nvml = self._init()
        if nvml is None:
            return None
        try:
            parts = []
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                parts.append(f"{util:.0f} % {mem.used / 2**30:.1f}/{mem.total / 2**30:.1f} GiB")
        except Exception:
            return None
        if not parts:
            return None
        return "GPU " + ", ".join(parts)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None

