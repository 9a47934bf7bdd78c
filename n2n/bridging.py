"""Micro-Manager's live frames through a denoising server, as ``n2n bridge`` and ``n2n demo`` both run it:
open the camera, start a server for its frame size (or use a running one), bridge, and stop one way.

Stopping: Ctrl-C or SIGTERM (or the caller's ``stop`` event) finishes the frames already sent and returns
with ``stopped`` set; a second Ctrl-C aborts at once (KeyboardInterrupt). A planned end (``frames`` sent,
``seconds`` elapsed) is not a stop. Until the bridge starts (camera, compiling) Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from n2n.stopping import graceful_signals
from streamer.client import read_ready_file
from streamer.core.messages import StatsMessage
from streamer.core.modelset import ModelSet
from streamer.micromanager.config import MicroManagerSourceConfig
from streamer.server import ServeConfig

__all__ = ["BridgeRun", "bridge_live", "read_ready_file"]


@dataclass
class BridgeRun:
    report: Any
    """The bridge's counts (:class:`streamer.micromanager.bridge.BridgeReport`)."""
    server: dict[str, Any] | None
    """The server started here (model, engine, precision, device); None for a running one."""
    status: StatsMessage | None
    """That server's status when the bridge ended."""
    stopped: bool
    """Ended early by Ctrl-C, SIGTERM or the caller's stop."""


DASH_WAIT_S = 2.0
"""The most the bridge waits for the dashboard to have the server's stats before the frames flow and after (a
server publishes every ``stats_interval_s``, 0.5 s by default)."""


class _Seen:
    """The stats messages the dashboard has had, to wait on."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def add(self, _message: Any) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait(self, count: int, timeout_s: float, stop: threading.Event) -> bool:
        """Until ``count`` messages were had (True), ``timeout_s`` passed or ``stop`` is set."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.count < count and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
            return self.count >= count


def bridge_live(source_config: MicroManagerSourceConfig, *, model: str | Path | Sequence[str] | None = None,
                serve: ServeConfig | None = None, endpoints: dict[str, str] | None = None,
                frames: int | None = None, seconds: float | None = None, out: str | Path | None = None,
                base_dir: Path | None = None, timeout_s: float = 10.0,
                view: Literal["progress", "dashboard", "none"] = "progress", console: Console | None = None,
                stop: threading.Event | None = None,
                started: Callable[[dict[str, Any] | None, dict[str, str], Any], None] | None = None) -> BridgeRun:
    """Bridge ``frames`` frames (None: until stopped or ``seconds`` have passed) from the camera through a
    server on ``model`` started here with ``serve`` (or the running one at ``endpoints``), saving raw and
    denoised frames to ``out``. ``started(server_info, endpoints, source)`` is called once frames are about
    to flow; ``view`` shows a progress bar or the live dashboard meanwhile (naming the camera; it sees the server's
    stats before the first frame and after the last, so its figures end as the run's: up to ``DASH_WAIT_S`` longer
    before the frames and as much after)."""
    from streamer.micromanager import open_source
    from streamer.micromanager.bridge import run_bridge
    from streamer.server import running_server
    from trainer.live import worker_command

    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    end = threading.Event()  # what run_bridge watches: a stop, or the planned end after `seconds`
    done = threading.Event()
    with contextlib.ExitStack() as stack:
        # the camera first: the server then compiles for its frame size before frames flow
        source = stack.enter_context(open_source(source_config, base_dir))
        server = None
        if endpoints is None:
            if model is None:
                raise ValueError("expected a model to serve or the endpoints of a running server, got neither")
            server = stack.enter_context(running_server(ModelSet.parse(model), serve, warmup_shape=source.shape,
                                                                 finetune_worker=worker_command()))
            endpoints = server.endpoints
        info = ({**server.denoiser.info(), "model_set": server.model_set.describe()} if server is not None
                else None)
        dash, seen = None, _Seen()
        if view == "dashboard":
            from streamer.dashboard import run_dashboard, source_label

            dash = threading.Thread(target=run_dashboard, args=(endpoints["stats"],),
                                    kwargs={"console": console, "stop": done, "camera": source_label(source),
                                            "on_stats": seen.add}, name="n2n-dash", daemon=True)
            stack.callback(dash.join, 5)
            stack.callback(done.set)  # (first: an error before the bridge still ends the dashboard)
            dash.start()
            seen.wait(1, DASH_WAIT_S, stop)  # it sees the server idle before the frames: its rates leave that out
        if started is not None:
            started(info, endpoints, source)
        deadline = None if seconds is None else time.monotonic() + seconds

        def watch() -> None:
            while not done.is_set():
                if stop.wait(0.05) or (deadline is not None and time.monotonic() >= deadline):
                    end.set()
                    return

        threads = [threading.Thread(target=watch, name="n2n-bridge-watch", daemon=True)]
        bar = stack.enter_context(_progress(console, frames)) if view == "progress" else None
        for thread in threads:
            thread.start()
        try:
            with graceful_signals(stop):
                report = run_bridge(source, endpoints, frames, out, timeout_s, end, bar)
                interrupted = stop.is_set()  # (a Ctrl-C in the wait below comes after every frame was bridged)
                if dash is not None:  # its last figures: the counts after the last frame, then the idle that
                    seen.wait(seen.count + 2, DASH_WAIT_S, stop)  # ends the stream's rate (not a stop: planned)
        finally:
            done.set()
            for thread in [*threads, *([dash] if dash is not None else [])]:
                thread.join(timeout=5)
        status = server.status() if server is not None else None
    report.interrupted = interrupted  # a planned end (frames sent, time up) is not an interruption
    return BridgeRun(report=report, server=info, status=status, stopped=stop.is_set())


@contextlib.contextmanager
def _progress(console: Console, total: int | None) -> Iterator[Callable[[Any], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("denoised"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("", total=total)
        yield lambda r: bar.update(task, completed=r.frames_denoised, description=f"(seen {r.frames_seen})")
