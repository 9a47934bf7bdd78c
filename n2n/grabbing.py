"""Noise2Noise training bursts within a multi-dimensional acquisition, as ``n2n grab --mda`` records them: load the
in-process Micro-Manager core (pymmcore-plus; the simulated microscope by default), record a burst at each place of
the sequence (:mod:`streamer.micromanager.grab_mda`) with a progress bar.

Stopping: Ctrl-C or SIGTERM cancels the acquisition (a burst under way is cut short and kept alone, every file
written so far valid); a second Ctrl-C aborts at once, the files still closed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from n2n.bridging import _graceful_signals
from streamer.micromanager.config import GrabConfig, MicroManagerSourceConfig

__all__ = ["grab_mda"]


def grab_mda(source: MicroManagerSourceConfig, grab: GrabConfig, sequence: Any, *, base_dir: Path | None = None,
             console: Console | None = None, stop: threading.Event | None = None,
             started: Callable[[Any, Any], None] | None = None) -> Any:
    """Record ``grab.frames`` consecutive frames at each place of ``sequence`` into ``grab.out`` on the core
    ``source`` names (an in-process one). ``started(core, plan)`` is called once the core is ready and the plan
    (:class:`~streamer.micromanager.grab_mda.BurstPlan`) checked. Returns the report
    (:class:`~streamer.micromanager.grab_mda.BurstsReport`, not yet analysed:
    :func:`~streamer.micromanager.grab_mda.analyse_bursts`)."""
    from streamer.micromanager import load_core, resolve_config_file
    from streamer.micromanager.core import close_core
    from streamer.micromanager.grab_mda import plan_grab, record_bursts

    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    cfg_file = resolve_config_file(source.config_file, base_dir)
    if cfg_file is None:
        raise ValueError("n2n grab --mda runs an in-process core (pymmcore-plus): expected --mm-config FILE.cfg or "
                         "'sim', got the Micro-Manager GUI (--gui grabs the GUI's current field, without --mda)")
    with contextlib.ExitStack() as stack:
        core = load_core(cfg_file)
        stack.callback(close_core, core)
        if source.exposure_ms is not None:
            core.setExposure(source.exposure_ms)
        plan = plan_grab(core, sequence, grab.frames, grab.out)
        if started is not None:
            started(core, plan)
        bar = stack.enter_context(_progress(console, plan.frames_planned))
        with _graceful_signals(stop):
            return record_bursts(core, plan, progress=bar, stop=stop)


@contextlib.contextmanager
def _progress(console: Console, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("grab"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("grab", total=total)
        yield lambda done, _total: bar.update(task, completed=done)
