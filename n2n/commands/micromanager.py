"""Micro-Manager: ``n2n grab`` (frames for training), ``n2n bridge`` (its live stream, denoised) and ``n2n
acquire`` (a multi-dimensional acquisition, denoised as it is written)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from n2n.command import AveragedOpt, Command, ConfigOpt, DryRunOpt, console, out
from n2n.errors import UserError, user_errors

__all__ = ["ACQUIRE", "BRIDGE", "GRAB", "acquire", "bridge", "grab"]

MMConfigFileOpt = Annotated[str | None, typer.Option(
    "--mm-config", help="Micro-Manager .cfg for an in-process core ('sim': the simulated camera).")]
GuiOpt = Annotated[bool, typer.Option("--gui", help="Attach to a running Micro-Manager GUI (pycromanager).")]
_SOURCE_FLAGS = {"--exposure-ms": "source.exposure_ms", "--mm-config": "source.config_file",
                 "--gui": "source.config_file"}
_SOURCE_DEFAULTS = {"--exposure-ms": "Micro-Manager's", "--json": "not written"}

def _camera_words(source: Any, yours: str = "--gui or --mm-config FILE.cfg") -> str:
    """The camera as the first line names it: n2n-live's simulated camera is always said to be one."""
    if getattr(source, "simulated", False):
        return f"the SIMULATED camera {source.camera!r} (synthetic cells, not a microscope; {yours} for yours)"
    return repr(source.camera)


GRAB = Command("streamer.micromanager.config:MicroManagerConfig", flags={
    "--frames": "grab.frames", "--out": "grab.out", "--mda": "grab.mda", **_SOURCE_FLAGS},
    defaults={**_SOURCE_DEFAULTS, "--mda": "none: the current field", "--frames": "200 (none with --mda)"})


@GRAB
def grab(
    frames: Annotated[int | None, typer.Option(help="Consecutive frames to record (with --mda: the frames of each "
                                                    "burst, required).")]
    = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="OME-TIFF to write (with --mda: the folder or the "
                                                  "prefix of the files, one per position, grid and z).")] = None,
    mda: Annotated[Path | None, typer.Option("--mda", help="A burst at each place (position, grid, channel, z) of "
                                             "a useq-schema MDASequence file (YAML or JSON; its time plan is "
                                             "ignored).")] = None,
    exposure_ms: Annotated[float | None, typer.Option("--exposure-ms", help="Set the camera exposure first.")] = None,
    mm_config: MMConfigFileOpt = None,
    gui: GuiOpt = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Record consecutive frames from Micro-Manager for Noise2Noise training (then `n2n train --data`); with --mda,
    a burst at each place of a multi-dimensional acquisition, one OME-TIFF (T, C, Y, X) per position, grid and z
    (then `n2n train --per-channel --data`)."""
    from streamer.core.config import NULL

    cfg = GRAB.load(config, dry_run, {"--frames": frames, "--out": out_path, "--mda": mda,
                                      "--exposure-ms": exposure_ms, "--mm-config": mm_config,
                                      "--gui": NULL if gui else None})
    if cfg.grab.mda is not None:
        from n2n.grabbing import grab_mda_command

        grab_mda_command(cfg, config.resolve().parent if config else None, json_path, _camera_words)
        return
    _refuse_written(cfg.grab.out, "")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from streamer.micromanager import open_source
    from streamer.micromanager.grab import analyse_pairs, record

    base_dir = config.resolve().parent if config else None
    try:
        with user_errors(), open_source(cfg.source, base_dir) as source:  # MicroManagerUnavailable: RuntimeError
            console.print(f"grabbing {cfg.grab.frames} frames of {source.shape[1]}x{source.shape[0]} "
                          f"{source.dtype.name} from {_camera_words(source)} at {source.exposure_ms:g} ms"
                          + (" (following Micro-Manager's live stream)" if source.following else ""),
                          highlight=False)
            with Progress(TextColumn("grab"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=console, transient=True) as bar:
                task = bar.add_task("grab", total=cfg.grab.frames)
                report = record(source, cfg.grab.frames, cfg.grab.out,
                                progress=lambda done, total: bar.update(task, completed=done))
            max_value = float(2**source.bit_depth - 1) if source.dtype.kind == "u" else float("inf")
    except KeyboardInterrupt:
        kept = Path(cfg.grab.out)
        console.print(f"[yellow]interrupted; the frames recorded so far are in {kept}[/yellow]" if kept.exists()
                      else "[yellow]interrupted before the first frame; nothing written[/yellow]", highlight=False)
        raise typer.Exit(code=130) from None
    if report.frames < 2:
        raise UserError(f"expected at least 2 frames for Noise2Noise, got {report.frames} (in {report.path})")
    with user_errors(prefix=f"{report.path} was written but could not be checked: "):
        analysis = analyse_pairs(report.path, max_value, cfg.grab.saturation_fraction, cfg.grab.max_shift_px)
    report.saturated_fraction = analysis["saturated_fraction"]
    report.correlation = analysis["correlation"]
    report.shift_px = analysis["shift_px"]
    report.warnings = analysis["warnings"]
    if report.missed:
        report.warnings.insert(0, f"{report.missed} frame(s) were overwritten in Micro-Manager's buffer before "
                               "they were read: the recording has gaps (pairs across a gap are not consecutive)")
    elif not report.consecutive:
        report.warnings.insert(0, "the image numbers are not consecutive (the camera or Micro-Manager skipped "
                               "frames): pairs across a gap are not consecutive")
    import numpy as np

    table = Table(title=f"grabbed {report.path}", show_header=False)
    corr = np.asarray(report.correlation)
    rows = [
        ("frames", f"{report.frames} ({report.shape[1]}x{report.shape[0]} {report.dtype}), image numbers "
                   f"{report.first_image_number}…{report.last_image_number}"
                   + (" consecutive" if report.consecutive else " WITH GAPS")),
        ("rate", f"{report.fps:.1f} frames/s over {report.seconds:.1f} s at {report.exposure_ms:g} ms exposure"),
        ("saturated", f"max {max(report.saturated_fraction):.3%} of pixels per frame"),
        ("pair correlation", f"median {np.median(corr):.3f}, min {corr.min():.3f}"),
        ("pair shift", f"max {max(report.shift_px):.2f} px (limit {cfg.grab.max_shift_px:g})"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}", highlight=False)
    if json_path is not None:
        with user_errors():
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    train_cmd = f"n2n train --config configs/train_fast.yaml --data {report.path} --out runs/NAME"
    if report.warnings:
        console.print(f"fix what the warnings above say and grab again before training ({train_cmd}): a model "
                      "learns the motion, gaps or saturation too", highlight=False, soft_wrap=True)
    else:
        console.print(f"train on it (the real-time preset): {train_cmd}", highlight=False, soft_wrap=True)


BRIDGE = Command("streamer.micromanager.config:MicroManagerConfig", flags={
    "--averaged": "serve.averaged",
    "--model": "bridge.model", "--connect": "bridge.connect", "--frames": "bridge.frames", "--out": "bridge.out",
    "--no-save": "bridge.out", "--mode": "serve.mode", "--engine": "serve.engine", "--precision": "serve.precision",
    "--retime": "serve.retime", "--device": "serve.device", "--threads": "serve.num_threads",
    "--finetune": "serve.finetune.enabled",
    **_SOURCE_FLAGS},
    defaults={**_SOURCE_DEFAULTS, "--threads": "the engine's (all cores)", "--json": "not written"})


@BRIDGE
def bridge(
    model: Annotated[list[str] | None, typer.Option(
        "--model", metavar="[CHANNEL=]MODEL",
        help="Model folder (or zoo package .zip) to serve (starts a server here); a model per channel: repeat as "
             "CHANNEL=FOLDER (the core's channel group names each frame's channel), or a models.yaml.")] = None,
    connect: Annotated[Path | None, typer.Option(
        "--connect", help="Use a running `n2n serve` instead: its --ready-file.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames to bridge; 0 runs until Ctrl-C.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="OME-TIFF of raw + denoised.")] = None,
    no_save: Annotated[bool, typer.Option("--no-save", help="Do not write an OME-TIFF.")] = False,
    mode: Annotated[str | None, typer.Option(help="live (latest frame wins) or lossless (every frame).")] = None,
    engine: Annotated[str | None, typer.Option(help="auto, openvino, onnxruntime or torch.")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (the fastest that passed its check, as recorded for this machine), fp32, bf16, fp16 or int8.")]
    = None,
    retime: Annotated[bool | None, typer.Option("--retime", help="Precision auto: time the precisions again instead "
                                                "of taking the choice recorded for this machine.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the engine.")] = None,
    finetune: Annotated[bool | None, typer.Option("--finetune", help="Keep training the model on the stream "
                                                  "(the server it starts) and swap in what validates better.")]
    = None,
    exposure_ms: Annotated[float | None, typer.Option("--exposure-ms", help="Set the camera exposure first.")] = None,
    mm_config: MMConfigFileOpt = None,
    gui: GuiOpt = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the counts here.")] = None,
    averaged: AveragedOpt = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Denoise Micro-Manager's live frames through the server; save raw + denoised, publish for viewers."""
    from streamer.core.config import NULL

    if frames is not None and frames < 0:
        raise UserError(f"--frames: expected 0 (until Ctrl-C) or more, got {frames}")
    cfg = BRIDGE.load(config, dry_run, {
        "--model": model, "--connect": connect, "--frames": NULL if frames == 0 else frames, "--out": out_path,
        "--no-save": NULL if no_save else None, "--mode": mode, "--engine": engine, "--precision": precision,
        "--retime": retime, "--averaged": averaged, "--device": device, "--threads": threads, "--finetune": finetune,
        "--exposure-ms": exposure_ms,
        "--mm-config": mm_config,
        "--gui": NULL if gui else None})
    if cfg.bridge.connect is not None and cfg.serve.averaged > 1:
        raise UserError(f"--averaged {cfg.serve.averaged}: a running server (--connect) denoises as it was started; "
                        f"start it with `n2n serve --averaged {cfg.serve.averaged}` instead")
    if cfg.bridge.model is None and cfg.bridge.connect is None:
        raise UserError("expected a model to serve (--model runs/NAME) or a running server "
                        "(--connect READY_FILE), got neither")
    if cfg.bridge.out is not None:
        _refuse_written(cfg.bridge.out, ", or --no-save")
    import zmq

    from n2n.bridging import bridge_live, read_ready_file

    total = cfg.bridge.frames

    def started(info: dict[str, Any] | None, endpoints: dict[str, str], source: Any) -> None:
        console.print(f"bridging {total or 'until Ctrl-C'} frames of {source.shape[1]}x{source.shape[0]} from "
                      f"{_camera_words(source)}", highlight=False)
        if info is not None:
            console.print(f"serving {info.get('model_set') or info['model']} with {info['engine']} "
                          f"({info['precision']}) in "
                          f"{cfg.serve.mode} mode; subscribers take {endpoints['output']}, `n2n view` shows "
                          f"{endpoints['view']}", highlight=False)

    try:
        with user_errors(zmq.ZMQError):
            endpoints = read_ready_file(cfg.bridge.connect) if cfg.bridge.connect else None
            run = bridge_live(cfg.source, model=cfg.bridge.model, serve=cfg.serve, endpoints=endpoints,
                              frames=total, out=cfg.bridge.out, base_dir=config.resolve().parent if config else None,
                              timeout_s=cfg.source.timeout_s, view="progress", console=console, started=started)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: Micro-Manager released, server stopped[/yellow]")
        raise typer.Exit(code=130) from None
    report = run.report
    table = Table(title="bridge", show_header=False)
    for k, v in (("frames seen", report.frames_seen), ("denoised", report.frames_denoised),
                 ("dropped", f"{report.frames_dropped} by the server ({report.mode} mode), "
                             f"{report.missed_in_micromanager} overwritten in Micro-Manager's buffer"),
                 ("refused / unaccounted", f"{report.frames_failed} / {report.frames_unaccounted}"),
                 ("rate", f"{report.fps_in:.1f} frames/s in, {report.fps_out:.1f} out"),
                 ("latency", f"p50 {report.latency_ms_p50} ms, p99 {report.latency_ms_p99} ms (capture → denoised)"),
                 ("engine", report.engine),
                 ("saved", f"{_saved_in(report)}: {report.planes_written} frames raw + denoised "
                           f"({report.frames_denoised} denoised, the others raw in both channels, each plane's "
                           "n2n-denoised says which)" if report.out else "not saved")):
        table.add_row(k, str(v))
    out.print(table)
    if json_path is not None:
        with user_errors():
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def _refuse_written(out: str | Path, other: str) -> None:
    """Refuse, before the camera is touched, an ``--out`` that holds a recording: nothing a user acquired is ever
    written over (as ``n2n grab --mda`` and ``n2n acquire`` refuse theirs)."""
    path = Path(out)
    if path.exists():
        raise UserError(f"{path} exists: expected a new --out{other} (a recording is never written over; move "
                        "that file first to use its name again)")


def _saved_in(report: Any) -> str:
    """Where the bridge saved: its file, or its files when the frame size changed (one file per size run)."""
    files = list(report.files) or [report.out]
    if len(files) == 1:
        return str(files[0])
    return f"{', '.join(map(str, files))} (a new file at each change of frame size)"


ACQUIRE = Command("streamer.micromanager.config:MicroManagerConfig", flags={
    "--averaged": "serve.averaged",
    "--mda": "acquire.mda", "--model": "acquire.models", "--connect": "acquire.connect", "--out": "acquire.out",
    "--format": "acquire.format", "--overwrite": "acquire.overwrite", "--engine": "serve.engine",
    "--precision": "serve.precision", "--device": "serve.device",
    "--threads": "serve.num_threads", "--exposure-ms": "source.exposure_ms", "--mm-config": "source.config_file"},
    defaults={**_SOURCE_DEFAULTS, "--threads": "the engine's (all cores)",
              "--json": "not written (OUT/acquire.json always is)", "--mm-config": "sim (the simulated microscope)"})


@ACQUIRE
def acquire(
    mda: Annotated[Path | None, typer.Option("--mda", help="The acquisition: a useq-schema MDASequence file (YAML "
                                             "or JSON: channels, stage positions, z plan, time plan).")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", metavar="[CHANNEL=]MODEL",
        help="The model set to serve (starts a server here): FOLDER (every channel), CHANNEL=FOLDER (repeat per "
             "channel; a channel without a model is written raw, marked) or models.yaml.")]
    = None,
    connect: Annotated[Path | None, typer.Option(
        "--connect", help="Use a running `n2n serve` instead: its --ready-file.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Folder written: raw and denoised acquisitions, "
                                                  "acquire.json.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="ome-zarr or ome-tiff.")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Write over an acquisition already in "
                                                   "--out.")] = None,
    engine: Annotated[str | None, typer.Option(help="auto, openvino, onnxruntime or torch.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32, bf16, fp16 or int8.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the engine.")] = None,
    exposure_ms: Annotated[float | None, typer.Option("--exposure-ms", help="Set the camera exposure first (a "
                                                      "channel's own exposure in the sequence wins).")] = None,
    mm_config: MMConfigFileOpt = None,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="Show the live dashboard instead of a progress "
                                            "bar.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here too.")] = None,
    averaged: AveragedOpt = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Run a multi-dimensional acquisition (pymmcore-plus MDA: channels, positions, z, time) with every frame
    denoised before it is written: raw and denoised both kept (OME-Zarr or OME-TIFF, the acquisition's axes and
    channel names), each channel by its own model and each place by its own history."""
    cfg = ACQUIRE.load(config, dry_run, {
        "--mda": mda, "--model": model, "--connect": connect, "--out": out_path, "--format": fmt,
        "--overwrite": overwrite, "--engine": engine, "--precision": precision, "--averaged": averaged,
        "--device": device,
        "--threads": threads, "--exposure-ms": exposure_ms, "--mm-config": mm_config})
    acq = cfg.acquire
    if acq.connect is not None and cfg.serve.averaged > 1:
        raise UserError(f"--averaged {cfg.serve.averaged}: a running server (--connect) denoises as it was started; "
                        f"start it with `n2n serve --averaged {cfg.serve.averaged}` instead")
    if acq.mda is None:
        raise UserError("expected the acquisition to run (--mda SEQUENCE.yaml, a useq-schema MDASequence), got none")
    if not acq.models and acq.connect is None:
        raise UserError("expected a model set to serve (--model runs/NAME, or --model DAPI=runs/dapi --model "
                        "GFP=runs/gfp) or a running server (--connect READY_FILE), got neither")
    import zmq

    from n2n.acquiring import acquire_mda
    from n2n.bridging import read_ready_file
    from streamer.micromanager import resolve_config_file
    from streamer.micromanager.mda import read_sequence
    from streamer.sources.micromanager import is_simulated

    base_dir = config.resolve().parent if config else None
    with user_errors():
        sequence = read_sequence(resolve_config_file(acq.mda, base_dir) or acq.mda)

    def started(info: dict[str, Any] | None, endpoints: dict[str, str], core: Any) -> None:
        sizes = " × ".join(f"{n} {k}" for k, n in sequence.sizes.items() if n > 1) or "1 frame"
        sim = "the SIMULATED microscope (synthetic cells, not a microscope; --mm-config FILE.cfg for yours)" \
            if is_simulated(core, core.getCameraDevice()) else f"camera {core.getCameraDevice()!r}"
        console.print(f"acquiring {sizes} of {core.getImageWidth()}x{core.getImageHeight()} from {sim} into "
                      f"{acq.out}", highlight=False)
        if info is not None:
            routing = info.get("model_set") or info["model"]
            console.print(f"serving {routing} with {info['engine']} ({info['precision']}); `n2n view` shows "
                          f"{endpoints['view']}", highlight=False)

    try:
        with user_errors(zmq.ZMQError):
            endpoints = read_ready_file(acq.connect) if acq.connect else None
            run = acquire_mda(cfg.source, acq, sequence, serve=cfg.serve, endpoints=endpoints, base_dir=base_dir,
                              view="dashboard" if dashboard else "progress", console=console, started=started)
    except KeyboardInterrupt:
        console.print(f"[yellow]aborted: Micro-Manager released, server stopped; what was written is in "
                      f"{acq.out}[/yellow]", highlight=False)
        raise typer.Exit(code=130) from None
    report = run.report
    reasons = ", ".join(f"{n} {k}" for k, n in report.reasons.items())
    table = Table(title="acquire" + (" (stopped early)" if report.stopped else ""), show_header=False)
    for k, v in (("frames", f"{report.frames} of {report.frames_planned} planned ({report.seconds:.1f} s)"),
                 ("denoised", f"{report.denoised_frames}"
                  + (f"; {report.passed_raw} written raw, marked ({reasons})" if report.passed_raw else "")),
                 ("streams", f"{len(report.streams)} (position, channel, z), each with its own history"),
                 ("raw record", f"{report.raw}: {report.raw_recorded} frames"
                  + (f", {report.raw_record_errors} NOT recorded (see the log)" if report.raw_record_errors
                     else "")
                  + "".join(f"; {n} of another frame size kept, raw and denoised, in {f}"
                            for f, n in report.other_sizes.items())),
                 ("denoised record", report.denoised)):
        table.add_row(k, str(v))
    out.print(table)
    document = {"report": report.to_dict(), "server": run.server, "sequence": sequence.model_dump(mode="json")}
    with user_errors():
        for path in [Path(acq.out) / "acquire.json", *([json_path] if json_path is not None else [])]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(document, indent=2, default=str) + "\n")
