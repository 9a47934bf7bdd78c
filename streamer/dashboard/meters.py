"""This machine's load for the dashboard: CPU from ``/proc/stat``, GPU through NVML when ``pynvml`` is there."""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["CpuMeter", "GpuMeter"]


class CpuMeter:
    """Whole-machine CPU busy percentage from the deltas of ``/proc/stat`` between calls."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path
        self._last: tuple[int, int] | None = None

    def _read(self) -> tuple[int, int] | None:
        """(total, idle) jiffies, None when unreadable."""
        try:
            with open(self.path) as f:
                fields = f.readline().split()
        except OSError:
            return None
        if len(fields) < 5 or fields[0] != "cpu":
            return None
        try:
            # user nice system idle iowait irq softirq steal (guest time is already in user)
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    def percent(self) -> float | None:
        """Busy % since the previous call; None on the first call or where /proc/stat is missing."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        total, idle = now[0] - last[0], now[1] - last[1]
        if total <= 0:
            return None
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


# --- rendering ----------------------------------------------------------------------------------------------
