"""Noise2Noise training bursts within a multi-dimensional acquisition, as ``n2n grab --mda`` records them: load the
in-process Micro-Manager core (pymmcore-plus; the simulated microscope by default), say what will be recorded and
how much disk it takes, record a burst at each place of the sequence (:mod:`streamer.micromanager.grab_mda`) with a
progress bar, then report a row per stream.

Stopping: Ctrl-C or SIGTERM cancels the acquisition (a burst under way is cut short and kept alone, every file
written so far valid); a second Ctrl-C aborts at once, the files still closed. The files are assembled from the
bursts after the acquisition, whichever way it ended; Ctrl-C waits for that (it is short).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from n2n.command import console as cli_console
from n2n.command import out
from n2n.errors import UserError, user_errors
from n2n.inprocess import inprocess_core
from n2n.stopping import graceful_signals
from streamer.micromanager.config import GrabConfig, MicroManagerSourceConfig

__all__ = ["grab_mda", "grab_mda_command"]


def grab_mda(source: MicroManagerSourceConfig, grab: GrabConfig, sequence: Any, *, base_dir: Path | None = None,
             console: Console | None = None, stop: threading.Event | None = None,
             started: Callable[[Any, Any], None] | None = None) -> Any:
    """Record ``grab.frames`` consecutive frames at each place of ``sequence`` into ``grab.out`` on the core
    ``source`` names (an in-process one). ``started(core, plan)`` is called once the core is ready and the plan
    (:class:`~streamer.micromanager.grab_mda.BurstPlan`) checked. Returns the report
    (:class:`~streamer.micromanager.grab_mda.BurstsReport`, not yet analysed:
    :func:`~streamer.micromanager.grab_mda.analyse_bursts`)."""
    from streamer.micromanager.grab_mda import plan_grab, record_bursts

    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    with contextlib.ExitStack() as stack:
        core = stack.enter_context(inprocess_core(source, base_dir, "n2n grab --mda", "--gui grabs the GUI's "
                                                  "current field, without --mda"))
        plan = plan_grab(core, sequence, grab.frames, grab.out)
        if started is not None:
            started(core, plan)
        bar = stack.enter_context(_progress(console, plan.frames_planned))
        with graceful_signals(stop, "stopping after the frame under way, then assembling the files"):
            return record_bursts(core, plan, progress=bar, stop=stop)


def grab_mda_command(cfg: Any, base_dir: Path | None, json_path: Path | None,
                     camera_words: Callable[[Any, str], str]) -> None:
    """``n2n grab --mda``: a burst at each place of the sequence, one file per (position, grid, z), a row per
    stream (``cfg``: the command's :class:`~streamer.micromanager.config.MicroManagerConfig`; ``camera_words``
    names the camera as the command's first line does). Exit 130 when stopped; a UserError (exit 2) when frames
    are missing though nothing stopped the run."""
    from types import SimpleNamespace

    from streamer.micromanager import resolve_config_file
    from streamer.micromanager.grab_mda import analyse_bursts
    from streamer.micromanager.grab_plan import burst_sequence, plan_bursts, size_text
    from streamer.micromanager.mda import read_sequence
    from streamer.sources.micromanager import is_simulated

    console = cli_console
    grab_cfg = cfg.grab
    with user_errors():
        sequence = read_sequence(resolve_config_file(grab_cfg.mda, base_dir) or grab_cfg.mda)
    if "frames" not in grab_cfg.model_fields_set:
        with user_errors():
            bursts = len(plan_bursts(burst_sequence(sequence, 2), 2)[1]) // 2
        raise UserError(f"--frames: expected the frames of each burst with --mda (the sequence has {bursts} bursts, "
                        f"one per (position, grid, channel, z): --frames 50 records {50 * bursts} frames in all), got "
                        f"none (the single field's default, {grab_cfg.frames}, is not taken for each burst)")
    if sequence.time_plan is not None:
        console.print(f"the sequence's time plan ({sequence.sizes.get('t', 0)} time points) is ignored: each place "
                      f"gets one burst of {grab_cfg.frames} consecutive frames", highlight=False)
    planned: list[Any] = []

    def started(core: Any, plan: Any) -> None:
        camera = core.getCameraDevice()
        words = camera_words(SimpleNamespace(camera=camera, simulated=is_simulated(core, camera)),
                             "--mm-config FILE.cfg")
        planned.append(plan)
        console.print(f"grabbing {plan.frames} frames at each of {len(plan.streams)} places (position, grid, channel, "
                      f"z) of {core.getImageWidth()}x{core.getImageHeight()} from {words}: {plan.frames_planned} "
                      f"frames, up to {size_text(plan.bytes_planned)} in {len(plan.places)} file(s) in {plan.folder} "
                      f"({size_text(plan.bytes_needed)} free needed, margin included: every burst is spooled "
                      f"before its place's file is assembled)",
                      highlight=False, soft_wrap=True)

    try:
        with user_errors():
            report = grab_mda(cfg.source, grab_cfg, sequence, base_dir=base_dir, console=console, started=started)
    except KeyboardInterrupt:
        where = planned[0].folder if planned else Path(grab_cfg.out)
        alone = f"; a burst cut short alone in {planned[0].incomplete}" if planned else ""
        console.print(f"[yellow]interrupted; the bursts recorded so far are in {where} (each file whole{alone})"
                      f"[/yellow]", highlight=False)
        raise typer.Exit(code=130) from None
    with user_errors(prefix="the bursts were written but could not be checked: "):
        analyse_bursts(report, grab_cfg.saturation_fraction, grab_cfg.max_shift_px)
    _print_report(report, console)
    if json_path is not None:
        with user_errors():
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    warned = report.short or any(b.warnings for b in report.streams.values())
    if report.files:
        import shlex

        channels = {b.channel for b in report.streams.values() if b.complete and b.channel is not None}
        flag = ["--per-channel"] if len(channels) > 1 else []
        train = shlex.join(["n2n", "train", "--config", "configs/train_fast.yaml", *flag, "--data", *report.files,
                            "--out", "runs/NAME"])
        console.print(("fix what the warnings above say and grab again before training: " if warned
                       else "train on them (the real-time preset" + (", a model per channel" if flag else "")
                       + "): ") + train, highlight=False, soft_wrap=True)
    if report.stopped:
        console.print(f"[yellow]stopped: {report.frames} of {report.frames_planned} frames recorded[/yellow]",
                      highlight=False)
        raise typer.Exit(code=130)
    if report.short:
        cut = sum(not b.complete for b in report.streams.values())
        named = ", ".join(report.missing[:3]) + (", …" if len(report.missing) > 3 else "")
        raise UserError(f"expected {report.frames_planned} frames ({report.frames_per_burst} in each of "
                        f"{report.streams_planned} streams), got {report.frames}, though the run was not stopped: "
                        + (f"{len(report.missing)} stream(s) got none ({named})" if report.missing else "")
                        + (" and " if report.missing and cut else "")
                        + (f"{cut} burst(s) were cut short" if cut else "")
                        + " (the warnings above say which; pymmcore-plus's log why): grab those again into a new --out")


def _print_report(report: Any, console: Console) -> None:
    """A row per stream (one for each the runner skipped too), then the warnings."""
    table = Table(title=f"grabbed {report.frames} frames in {len(report.files)} file(s)"
                  + (" (stopped early)" if report.stopped else ""))
    for column in ("stream", "file", "frames", "saturated", "pair correlation", "pair shift", "warnings"):
        table.add_column(column, overflow="fold")
    for burst in report.streams.values():
        corr = sorted(burst.correlation)
        table.add_row(burst.stream, Path(burst.file).name, f"{burst.frames}" + ("" if burst.complete else " (cut)"),
                      f"{max(burst.saturated_fraction, default=0):.3%}",
                      f"{corr[len(corr) // 2]:.3f}" if corr else "-",
                      f"{max(burst.shift_px):.2f} px" if burst.shift_px else "-", str(len(burst.warnings)))
    for stream in [] if report.stopped else report.missing:  # (a stop's: the line after the table counts them)
        table.add_row(stream, "-", "0 (skipped)", "-", "-", "-", "1")
    out.print(table)
    for burst in report.streams.values():
        for warning in burst.warnings:
            console.print(f"[bold yellow]warning:[/bold yellow] {burst.stream}: {warning}", highlight=False,
                          soft_wrap=True)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _progress(console: Console, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("grab"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("grab", total=total)
        yield lambda done, _total: bar.update(task, completed=done)
