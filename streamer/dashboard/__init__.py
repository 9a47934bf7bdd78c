"""Live terminal dashboard for a running denoising server (``n2n dash``).

::

    n2n dash --stats-address tcp://127.0.0.1:5558      # the server's stats address (the default)

It subscribes to the server's stats socket (PUB, topic ``stats``, see
:class:`streamer.core.messages.StatsMessage`)
and redraws a compact panel a few times a second: frame rates in and out, latency p50/p95/p99
with a sparkline of the last minute, per-stage medians, drops, errors by kind, frames the checks flagged
(float path: the float32 fallback; raw: served not denoised; a model set's frames of a channel it has no model
for, by channel), queue depth, the engine, precision, device, model (a model set's by channel) and mode, the
camera when a bridge runs it (the simulated one said to be simulated), and this machine's CPU load (and GPU load
when ``pynvml`` is installed). It fits an 80 × 24 terminal without cutting a figure (rows wrap between their
fields), uses plain unicode text (no mouse, no images, no alternate screen), so it works over ssh; Ctrl-C quits cleanly.

The frame rates are the frames the server delivered over the time it delivered them, from the counters of its
last :data:`WINDOW_S` seconds of stats, idle time before and after the stream left out (:mod:`.rates`); the
server's own ``fps_in``/``fps_out`` average over 2 s, idle time included.

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
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live

from ..client import StatsSubscriber
from ..core.config import Versioned
from ..core.messages import StatsMessage
from .meters import CpuMeter, GpuMeter
from .rates import WINDOW_S, FrameRate, RateReading
from .render import SPARK_CHARS, STALE_AFTER_S, History, render, source_label, sparkline

__all__ = ["SPARK_CHARS", "STALE_AFTER_S", "WINDOW_S", "CpuMeter", "DashConfig", "FrameRate", "GpuMeter", "History",
           "RateReading", "render", "run_dashboard", "source_label", "sparkline"]


FIRST_LOAD_S = 0.25
"""The CPU's first figure comes this long after the start (then again until there is one): a short run has one."""
LOAD_EVERY_S = 1.0
"""Then the machine's load is read this often."""


class DashConfig(Versioned):
    """``n2n dash``: the live terminal dashboard."""

    stats: str = "tcp://127.0.0.1:5558"
    """The server's stats address (its ``endpoints.stats``)."""


def run_dashboard(address: str, *, console: Console | None = None, refresh_per_second: float = 4,
                  duration_s: float | None = None, stop: threading.Event | None = None, keys: Any = None,
                  camera: str | None = None, on_stats: Callable[[StatsMessage], None] | None = None) -> int:
    """Show the dashboard for the server publishing stats at ``address`` until Ctrl-C,
    ``duration_s`` seconds, or ``stop`` is set. Returns the exit code: 0, or 2 when
    ``address`` is not a valid ZeroMQ address. ``keys``: the client's CURVE keys, for a server with keys.
    ``camera``: the source the frames come from, for the header (:func:`source_label`; a bridge knows it,
    a dashboard attached to a server from outside does not). ``on_stats``: called with each stats message once
    the dashboard has it (a bridge waits on it for the dashboard to see the server before and after the frames)."""
    console = console or Console()
    period = 1.0 / max(refresh_per_second, 0.1)
    history = History()
    opened: list[Any] = []  # closed at the end: a Ctrl-C at any moment after the subscription ends with 0
    try:
        try:
            sub = StatsSubscriber(address, keys=keys)
        except ValueError as exc:
            console.print(f"[red]cannot connect to {address!r}: {exc}[/red]")
            return 2
        opened.append(sub)
        cpu, gpu = CpuMeter(), GpuMeter()  # the CPU's baseline now: a figure from the first reading on
        opened.append(gpu)
        started = time.monotonic()
        deadline = None if duration_s is None else started + duration_s
        stats: StatsMessage | None = None
        last: float | None = None
        cpu_pct: float | None = None
        gpu_text: str | None = None
        next_load = started + FIRST_LOAD_S

        def read_load(now: float) -> None:
            nonlocal cpu_pct, gpu_text, next_load
            cpu_pct, gpu_text = cpu.percent(), gpu.read()
            next_load = now + (LOAD_EVERY_S if cpu_pct is not None else FIRST_LOAD_S)

        def view(now: float) -> RenderableType:
            since = now - (started if last is None else last)
            return render(stats, history, address, seconds_since_last=since, cpu_percent=cpu_pct,
                          cpu_note=cpu.why_not, gpu=gpu_text, bad_messages=sub.bad, camera=camera)

        with Live(view(started), console=console, auto_refresh=False, screen=False, transient=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            next_refresh = started + period
            while not (stop is not None and stop.is_set()):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if now >= next_refresh:
                    if now >= next_load:
                        read_load(now)
                    live.update(view(now), refresh=True)
                    next_refresh = now + period
                wait = next_refresh - now if deadline is None else min(next_refresh, deadline) - now
                for message in sub.messages(max(0.0, wait)):
                    stats, last = message, time.monotonic()
                    history.add(message, last)
                    if on_stats is not None:
                        on_stats(message)
            now = time.monotonic()
            if cpu_pct is None:  # a run shorter than the first reading still ends with a figure
                read_load(now)
            live.update(view(now), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        for part in reversed(opened):
            part.close()
    return 0
