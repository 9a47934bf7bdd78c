"""Live terminal dashboard for a running denoising server (``n2n dash``).

::

    n2n dash --stats-address tcp://127.0.0.1:5558      # the server's stats address (the default)

It subscribes to the server's stats socket (PUB, topic ``stats``, see
:class:`streamer.core.messages.StatsMessage`)
and redraws a compact panel a few times a second: frame rates in and out, latency p50/p95/p99
with a sparkline of the last minute, per-stage medians, drops, errors by kind, frames the checks flagged
(float path: the float32 fallback; raw: served not denoised), queue depth,
the engine, precision, device, model and mode, and this machine's CPU load (and GPU load when
``pynvml`` is installed). It fits an 80 × 24 terminal, uses plain unicode text (no mouse, no
images, no alternate screen), so it works over ssh; Ctrl-C quits cleanly.

When nothing is listening yet it shows "waiting for server at <address>"; when the server
goes away it keeps the last figures and warns "no stats for N s".

From Python::

    from streamer.dashboard import run_dashboard
    run_dashboard("tcp://127.0.0.1:5558", duration_s=10)

:func:`render` is a pure function of one stats message (tests render it to a recording console).
This module never imports torch (slow to import); ``pynvml`` is optional.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live

from ..client import StatsSubscriber
from ..core.config import Versioned
from ..core.messages import StatsMessage
from .meters import CpuMeter, GpuMeter
from .render import SPARK_CHARS, STALE_AFTER_S, History, render, sparkline

__all__ = ["SPARK_CHARS", "STALE_AFTER_S", "CpuMeter", "DashConfig", "GpuMeter", "History", "render", "run_dashboard",
           "sparkline"]


class DashConfig(Versioned):
    """``n2n dash``: the live terminal dashboard."""

    stats: str = "tcp://127.0.0.1:5558"
    """The server's stats address (its ``endpoints.stats``)."""


def run_dashboard(address: str, *, console: Console | None = None, refresh_per_second: float = 4,
                  duration_s: float | None = None, stop: threading.Event | None = None, keys: Any = None) -> int:
    """Show the dashboard for the server publishing stats at ``address`` until Ctrl-C,
    ``duration_s`` seconds, or ``stop`` is set. Returns the exit code: 0, or 2 when
    ``address`` is not a valid ZeroMQ address. ``keys``: the client's CURVE keys, for a server with keys."""
    console = console or Console()
    period = 1.0 / max(refresh_per_second, 0.1)
    history = History()
    try:
        sub = StatsSubscriber(address, keys=keys)
    except ValueError as exc:
        console.print(f"[red]cannot connect to {address!r}: {exc}[/red]")
        return 2
    cpu, gpu = CpuMeter(), GpuMeter()
    try:
        started = time.monotonic()
        deadline = None if duration_s is None else started + duration_s
        stats: StatsMessage | None = None
        last: float | None = None
        cpu_pct: float | None = None
        gpu_text: str | None = None
        cpu.percent()  # the first reading only sets the baseline
        next_load = started + 1.0

        def view(now: float) -> RenderableType:
            since = now - (started if last is None else last)
            return render(stats, history, address, seconds_since_last=since, cpu_percent=cpu_pct, gpu=gpu_text,
                          bad_messages=sub.bad)

        with Live(view(started), console=console, auto_refresh=False, screen=False, transient=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            next_refresh = started + period
            while not (stop is not None and stop.is_set()):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if now >= next_refresh:
                    if now >= next_load:
                        cpu_pct, gpu_text = cpu.percent(), gpu.read()
                        next_load = now + 1.0
                    live.update(view(now), refresh=True)
                    next_refresh = now + period
                wait = next_refresh - now if deadline is None else min(next_refresh, deadline) - now
                for message in sub.messages(max(0.0, wait)):
                    stats, last = message, time.monotonic()
                    history.add(message, last)
            live.update(view(time.monotonic()), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        sub.close()
        gpu.close()
    return 0
