"""A multi-dimensional acquisition, every frame denoised before it is written, as ``n2n acquire`` runs it: load the
in-process Micro-Manager core (pymmcore-plus; the simulated microscope by default), start a server on the model set
for the camera's frame size (or use a running one), run the MDA with the denoising engine
(:mod:`streamer.micromanager.mda`), and show a progress bar or the live dashboard meanwhile.

Stopping: Ctrl-C or SIGTERM cancels the acquisition between two events (the frames acquired so far are written and
kept, both files closed); a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from n2n.bridging import DASH_WAIT_S, _Seen
from n2n.inprocess import inprocess_core
from n2n.stopping import graceful_signals
from streamer.core.messages import StatsMessage
from streamer.micromanager.config import AcquireConfig, MicroManagerSourceConfig
from streamer.server import ServeConfig

__all__ = ["AcquireRun", "acquire_mda"]


@dataclass
class AcquireRun:
    report: Any
    """What the acquisition did (:class:`streamer.micromanager.mda.AcquisitionReport`)."""
    server: dict[str, Any] | None
    """The server started here (model, engine, precision, device); None for a running one."""
    status: StatsMessage | None
    """That server's status when the acquisition ended."""


def acquire_mda(source: MicroManagerSourceConfig, acquire: AcquireConfig, sequence: Any, *,
                serve: ServeConfig | None = None, endpoints: dict[str, str] | None = None,
                base_dir: Path | None = None, view: Literal["progress", "dashboard", "none"] = "progress",
                console: Console | None = None, stop: threading.Event | None = None,
                started: Callable[[dict[str, Any] | None, dict[str, str], Any], None] | None = None) -> AcquireRun:
    """Run ``sequence`` as ``acquire`` says, on the core ``source`` names (an in-process one), through a server on
    ``acquire.models`` started here with ``serve`` (or the running one at ``endpoints``). ``started(server_info,
    endpoints, core)`` is called once frames are about to flow."""
    from streamer.micromanager.mda import acquire as run_acquisition
    from streamer.server import running_server
    from streamer.sources.micromanager import is_simulated

    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    done = threading.Event()
    with contextlib.ExitStack() as stack:
        core = stack.enter_context(inprocess_core(source, base_dir, "n2n acquire", "for the GUI's own acquisitions "
                                                  "use the pycromanager hook, docs/microscope.md"))
        shape = (core.getImageHeight(), core.getImageWidth())
        server = None
        if endpoints is None:
            if not acquire.models:
                raise ValueError("expected a model set to serve (--model) or a running server (--connect), got "
                                 "neither")
            from streamer.core.modelset import ModelSet

            models = ModelSet.parse(acquire.models)
            server = stack.enter_context(running_server(models, serve, warmup_shape=shape))
            endpoints = server.endpoints
        info = ({**server.denoiser.info(), "model_set": server.model_set.describe()} if server is not None
                else None)
        dash, seen = None, _Seen()
        if view == "dashboard":
            from streamer.dashboard import run_dashboard

            camera = core.getCameraDevice()
            label = (f"SIMULATED microscope {camera!r}: synthetic cells, not a microscope"
                     if is_simulated(core, camera) else f"camera {camera!r}")
            dash = threading.Thread(target=run_dashboard, args=(endpoints["stats"],),
                                    kwargs={"console": console, "stop": done, "camera": label,
                                            "on_stats": seen.add}, name="n2n-dash", daemon=True)
            stack.callback(dash.join, 5)
            stack.callback(done.set)
            dash.start()
            seen.wait(1, DASH_WAIT_S, stop)
        if started is not None:
            started(info, endpoints, core)
        planned = sum(1 for _ in sequence)
        bar = stack.enter_context(_progress(console, planned)) if view == "progress" else None
        try:
            with graceful_signals(stop):
                report = run_acquisition(core, sequence, endpoints, acquire.out, fmt=acquire.format,
                                         overwrite=acquire.overwrite, timeout_s=acquire.timeout_s, on_frame=bar,
                                         stop=stop)
                if dash is not None:
                    seen.wait(seen.count + 2, DASH_WAIT_S, stop)
        finally:
            done.set()
        status = server.status() if server is not None else None
    return AcquireRun(report=report, server=info, status=status)


@contextlib.contextmanager
def _progress(console: Console, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("acquired"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("", total=total)
        counts = {"frames": 0, "raw": 0}

        def frame(info: dict[str, Any]) -> None:
            counts["frames"] += 1
            counts["raw"] += not info.get("denoised")
            bar.update(task, completed=counts["frames"],
                       description=f"({counts['raw']} written raw)" if counts["raw"] else "")

        yield frame
