"""The ``n2n`` command. Each subcommand loads its YAML config, applies flag overrides,
validates again, and (with ``--dry-run``) prints the resolved config without running."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(
    name="n2n",
    help="n2n-live: Noise2Noise denoising for live fluorescence microscopy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()
log = logging.getLogger("n2n")

#: Options that take one or more values (``n2n train --data A.tif B.tif``), per subcommand.
MULTI_VALUE_OPTIONS = {"train": ("--data", "--reference")}

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")]


def expand_multi_value(argv: Sequence[str]) -> list[str]:
    """Turn ``--data A B`` into ``--data A --data B`` for the subcommands whose options
    take several files; other subcommands' arguments pass unchanged (so a stray second
    file is an error there, not silently dropped)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    multi = MULTI_VALUE_OPTIONS.get(command or "", ())
    result: list[str] = []
    current: str | None = None
    for arg in argv:
        if arg.startswith("-"):
            current = arg if arg in multi else None
            result.append(arg)
        elif current is not None and result[-1] != current:
            result += [current, arg]
        else:
            result.append(arg)
    return result


def _fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(code=2)


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("n2n")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=False))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _load(cls: type[BaseModel], path: Path | None, dry_run: bool, **overrides: Any) -> Any:
    from streamer.config import ConfigError, load_config

    try:
        cfg = load_config(cls, path, **overrides)
    except ConfigError as exc:
        _fail(str(exc))
    if dry_run:
        import yaml

        out.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="", highlight=False)
        raise typer.Exit(code=0)
    return cfg


def _settings(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as dotted-key overrides; values are YAML (numbers, lists, null...)."""
    import yaml

    from streamer.config import NULL

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects KEY=VALUE (e.g. --set model.depth=3), got {item!r}")
        try:
            value = yaml.safe_load(text)
            out[key.strip()] = NULL if value is None else value
        except yaml.YAMLError as exc:
            _fail(f"--set {key.strip()}: the value {text!r} is not valid YAML ({exc})")
    return out


_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError, OSError)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def simulate(
    out_path: Annotated[Path, typer.Option("--out", help="Raw frames (OME-TIFF, uint16, TYX).")],
    truth: Annotated[Path | None, typer.Option("--truth", help="Noise-free truth (OME-TIFF, float32 ADU).")] = None,
    frames: Annotated[int | None, typer.Option(help="Number of frames.")] = None,
    size: Annotated[int | None, typer.Option(help="Frame height and width in pixels.")] = None,
    exposure_ms: Annotated[float | None, typer.Option("--exposure-ms", help="Exposure time (sets the SNR).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sample and noise.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Record frames from the simulated fluorescence camera."""
    from trainer.config import SimulateConfig

    cfg = _load(SimulateConfig, config, dry_run, frames=frames, **{
        "camera.height": size, "camera.width": size, "camera.exposure_ms": exposure_ms, "camera.seed": seed})
    import tifffile
    from rich.progress import Progress

    from streamer.sources import simulate_stack

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=cfg.frames)
        raw, gt = simulate_stack(cfg.camera, cfg.frames, lambda done, _: progress.update(task, completed=done))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out_path, raw, ome=True, metadata={"axes": "TYX"})
    sidecar = {"camera": cfg.camera.model_dump(mode="json"), "frames": cfg.frames, "raw": out_path.name}
    if truth is not None:
        truth.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(truth, gt, ome=True, metadata={"axes": "TYX"})
        sidecar["truth"] = truth.name
    out_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    console.print(f"wrote {cfg.frames} frames of {raw.shape[1]}x{raw.shape[2]} to {out_path}"
                  + (f" and truth to {truth}" if truth else ""))


@app.command()
def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder to write (runs/NAME).")],
    data: Annotated[list[Path] | None, typer.Option("--data", help="Noisy stack(s), TIFF/OME-TIFF (T, H, W). "
                                                     "Without it: the simulated camera.")] = None,
    reference: Annotated[list[Path] | None, typer.Option("--reference", help="Clean reference per stack: "
                                                          "targets in supervised mode, else only scored.")] = None,
    mode: Annotated[str | None, typer.Option(help="n2n or supervised.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override optim.epochs.")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Override optim.steps_per_epoch.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override optim.seed.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any config key: --set model.depth=3 "
                                                   "--set 'model.filters=[4,16,32,64]' (YAML values; repeatable).")]
    = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's checkpoint.")] = False,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Fit a Noise2Noise (or supervised) U-Net and export it to ONNX."""
    from trainer.config import TrainConfig

    named = {"mode": mode, "optim.epochs": epochs, "optim.steps_per_epoch": steps_per_epoch,
             "optim.max_minutes": max_minutes, "optim.device": device, "optim.seed": seed,
             "data.source": "files" if data else None}
    cfg = _load(TrainConfig, config, dry_run, **{**{k: v for k, v in named.items() if v is not None},
                                                 **_settings(set_)})
    from trainer.run import run_training

    try:
        card = run_training(cfg, out_dir, data or [], reference or [], resume=resume, console=console)
    except KeyboardInterrupt:
        _fail(f"interrupted; resume with: n2n train --resume --out {out_dir} (same config and data)")
    except _EXPECTED_ERRORS as exc:
        _fail(str(exc))
    t = card.training
    table = Table(title=f"trained {out_dir}", show_header=False)
    table.add_row("mode", t["mode"])
    table.add_row("epochs (best)", f"{t['epochs']} ({t['best_epoch']}), {t['stopped']}")
    table.add_row("time", f"{t['seconds']:.0f} s on {t['device']} ({t['precision']})")
    for k, v in card.metrics.items():
        table.add_row(k, f"{v:.4g}")
    table.add_row("files", ", ".join(sorted(p.name for p in out_dir.iterdir() if p.is_file())))
    out.print(table)


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", help="Run folder made by `n2n train`.")],
    format: Annotated[str | None, typer.Option("--format", help="onnx, torchscript or int8 (OpenVINO, checked).")]
    = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (>= 18).")] = None,
    max_loss_db: Annotated[float | None, typer.Option(help="int8: keep it only if it loses at most this (dB).")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Export a trained model (checked against PyTorch, or for int8 on held-out frames; refused beyond the limit)."""
    from trainer.config import ExportConfig

    cfg = _load(ExportConfig, config, dry_run, format=format, opset=opset, **{"quantize.max_loss_db": max_loss_db})
    from trainer.card import add_artifact
    from trainer.export import ONNX_NAME, TORCHSCRIPT_NAME, export_onnx, export_torchscript
    from trainer.inference import load_run

    try:
        if cfg.format == "int8":
            from trainer.run import quantize_run, training_data

            train_cfg, stacks, refs = training_data(model)
            train_cfg.quantize = cfg.quantize
            q = quantize_run(model, train_cfg, stacks, refs)
            if q.status != "kept":
                _fail(f"no INT8 export: {q.reason}")
            out.print(f"wrote {model / 'model_int8.xml'} ({q.reason})")
            return
        m = load_run(model)
        if cfg.format == "onnx":
            info = export_onnx(m.net, model / ONNX_NAME, cfg.opset, cfg.check_size, cfg.max_rel_error)
        else:
            info = export_torchscript(m.net, model / TORCHSCRIPT_NAME, cfg.check_size, cfg.max_rel_error)
        add_artifact(model, info)
    except _EXPECTED_ERRORS as exc:  # ExportError is a RuntimeError
        _fail(str(exc))
    out.print(f"wrote {model / info.path} (relative error vs PyTorch {info.parity_rel_error:.2g})")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Run folder made by `n2n train`.")],
    data: Annotated[Path, typer.Option("--data", help="Noisy stack to denoise (T, H, W).")],
    reference: Annotated[Path, typer.Option("--reference", help="Clean reference, (H, W) or (T, H, W).")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    figure: Annotated[Path | None, typer.Option("--figure", help="PNG: raw | denoised | reference.")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Only the first N frames.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Score a model against a reference, beside Gaussian and frame-averaging baselines."""
    from trainer.config import EvaluateConfig

    cfg = _load(EvaluateConfig, config, dry_run, max_frames=max_frames)
    from rich.progress import Progress

    from streamer.sources import read_stack
    from trainer.evaluate import evaluate as run_eval
    from trainer.evaluate import save_figure
    from trainer.inference import load_run

    try:
        m = load_run(model)
        raw = read_stack(data, allow_2d=False)
        ref = read_stack(reference)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("denoising", total=len(raw))
            report, den = run_eval(m, raw, ref, cfg, lambda done, _: progress.update(task, completed=done))
    except _EXPECTED_ERRORS as exc:
        _fail(str(exc))
    report = {"model": str(model), "data": str(data), "reference": str(reference), **report}
    table = Table(title=f"{data.name} vs {reference.name} ({report['frames']} frames)")
    for col in ("method", "PSNR (dB)", "SSIM"):
        table.add_column(col)
    rows = [("raw", "raw"), ("n2n-live model", "denoised"), (f"Gaussian σ={report['gaussian_sigma']}", "gaussian"),
            ("average of 2", "average2"), ("average of 4", "average4")]
    for label, key in rows:
        if report.get(f"psnr_{key}") is not None:
            table.add_row(label, f"{report[f'psnr_{key}']:.2f}", f"{report[f'ssim_{key}']:.4f}")
    out.print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    if figure:
        figure.parent.mkdir(parents=True, exist_ok=True)
        t = 0
        save_figure(figure, raw[t], den[t], ref[t] if ref.ndim == 3 else ref, report)


@app.command()
def serve(
    model: Annotated[Path, typer.Option("--model", help="Model folder made by `n2n train` (model.json + exports).")],
    engine: Annotated[str | None, typer.Option(help="auto, openvino, onnxruntime or torch.")] = None,
    mode: Annotated[str | None, typer.Option(help="live (latest frame wins) or lossless (every frame).")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (the fastest that passed its check), fp32, bf16, fp16 or int8.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the engine.")] = None,
    output_dtype: Annotated[str | None, typer.Option("--output-dtype", help="same or float32.")] = None,
    input_addr: Annotated[str | None, typer.Option("--input", help="PULL address for frames.")] = None,
    output_addr: Annotated[str | None, typer.Option("--output", help="PUB address for denoised frames.")] = None,
    request_addr: Annotated[str | None, typer.Option("--request", help="ROUTER address for requests.")] = None,
    stats_addr: Annotated[str | None, typer.Option("--stats", help="PUB address for statistics.")] = None,
    control_addr: Annotated[str | None, typer.Option("--control", help="REP address for commands.")] = None,
    ready_file: Annotated[Path | None, typer.Option("--ready-file", help="Write the bound addresses here "
                                                     "(JSON) once the engine is compiled.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Denoise frames streamed over ZeroMQ until Ctrl-C, SIGTERM or a shutdown command."""
    from streamer.config import ServeConfig

    cfg = _load(ServeConfig, config, dry_run, engine=engine, mode=mode, precision=precision, device=device,
                num_threads=threads, output_dtype=output_dtype, **{
                    "endpoints.input": input_addr, "endpoints.output": output_addr,
                    "endpoints.request": request_addr, "endpoints.stats": stats_addr,
                    "endpoints.control": control_addr})
    import signal

    from streamer.server import Server

    try:
        server = Server(model, cfg)
        endpoints = server.start()
    except _EXPECTED_ERRORS as exc:  # EngineUnavailable is a RuntimeError
        _fail(str(exc))

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    info = server.denoiser.info()
    console.print(f"serving [bold]{info['model']}[/bold] with {info['engine']} ({info['device']}, "
                  f"{info['precision']}) in {cfg.mode} mode", highlight=False)
    for name, addr in endpoints.items():
        console.print(f"  {name:8s} {addr}", highlight=False)
    if ready_file is not None:
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps({"endpoints": endpoints, **info}, indent=2) + "\n")
        tmp.replace(ready_file)
    server.serve_forever()
    st = server.stats
    console.print(f"stopped: {st.frames_in} frames in, {st.frames_out} out, {st.drops} dropped, "
                  f"{sum(st.errors.values())} errors", highlight=False)


def _load_mm(config: Path | None, dry_run: bool, **overrides: Any) -> Any:
    from streamer.config import MicroManagerConfig

    return _load(MicroManagerConfig, config, dry_run, **overrides)


MMConfigFileOpt = Annotated[str | None, typer.Option(
    "--mm-config", help="Micro-Manager .cfg for an in-process core ('sim': the simulated camera).")]
GuiOpt = Annotated[bool, typer.Option("--gui", help="Attach to a running Micro-Manager GUI (pycromanager).")]


@app.command()
def grab(
    frames: Annotated[int | None, typer.Option(help="Consecutive frames to record.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="OME-TIFF to write.")] = None,
    exposure_ms: Annotated[float | None, typer.Option("--exposure-ms", help="Set the camera exposure first.")] = None,
    mm_config: MMConfigFileOpt = None,
    gui: GuiOpt = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Record consecutive frames from Micro-Manager for Noise2Noise training (then `n2n train --data`)."""
    overrides: dict[str, Any] = {"grab.frames": frames, "grab.out": str(out_path) if out_path else None,
                                 "source.exposure_ms": exposure_ms, "source.config_file": mm_config}
    cfg = _load_mm(config, dry_run, **overrides)
    if gui:
        cfg.source.config_file = None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from streamer.micromanager import open_source
    from streamer.micromanager.grab import analyse_pairs, record

    base_dir = config.resolve().parent if config else None
    try:
        with open_source(cfg.source, base_dir) as source:
            console.print(f"grabbing {cfg.grab.frames} frames of {source.shape[1]}x{source.shape[0]} "
                          f"{source.dtype.name} from {source.camera!r} at {source.exposure_ms:g} ms"
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
        _fail(f"interrupted; the frames recorded so far are in {kept}" if kept.exists()
              else "interrupted before the first frame; nothing written")
    except _EXPECTED_ERRORS as exc:  # MicroManagerUnavailable is a RuntimeError, TimeoutError an OSError
        _fail(str(exc))
    if report.frames < 2:
        _fail(f"only {report.frames} frame(s) recorded; Noise2Noise needs at least 2")
    try:
        analysis = analyse_pairs(report.path, max_value, cfg.grab.saturation_fraction, cfg.grab.max_shift_px)
    except (ValueError, OSError) as exc:
        _fail(f"{report.path} was written but could not be checked: {exc}")
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
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    console.print(f"train on it: n2n train --data {report.path} --out runs/NAME", highlight=False)


@app.command()
def bridge(
    model: Annotated[Path | None, typer.Option("--model", help="Model folder to serve (starts a server here).")] = None,
    connect: Annotated[Path | None, typer.Option(
        "--connect", help="Use a running `n2n serve` instead: its --ready-file.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames to bridge; 0 runs until Ctrl-C.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="OME-TIFF of raw + denoised.")] = None,
    no_save: Annotated[bool, typer.Option("--no-save", help="Do not write an OME-TIFF.")] = False,
    mode: Annotated[str | None, typer.Option(help="live (latest frame wins) or lossless (every frame).")] = None,
    engine: Annotated[str | None, typer.Option(help="auto, openvino, onnxruntime or torch.")] = None,
    exposure_ms: Annotated[float | None, typer.Option("--exposure-ms", help="Set the camera exposure first.")] = None,
    mm_config: MMConfigFileOpt = None,
    gui: GuiOpt = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the counts here.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Denoise Micro-Manager's live frames through the server; save raw + denoised, publish for viewers."""
    overrides: dict[str, Any] = {"bridge.model": str(model) if model else None,
                                 "bridge.connect": str(connect) if connect else None,
                                 "bridge.out": str(out_path) if out_path else None,
                                 "serve.mode": mode, "serve.engine": engine,
                                 "source.exposure_ms": exposure_ms, "source.config_file": mm_config}
    if frames is not None and frames < 0:
        _fail(f"--frames must be 0 (until Ctrl-C) or more, got {frames}")
    cfg = _load_mm(config, dry_run, **overrides)
    if frames is not None:
        cfg.bridge.frames = frames or None
    if no_save:
        cfg.bridge.out = None
    if gui:
        cfg.source.config_file = None
    if cfg.bridge.model is None and cfg.bridge.connect is None:
        _fail("give a model to serve (--model runs/NAME) or a running server (--connect READY_FILE)")
    import contextlib
    import signal
    import threading

    import zmq

    from streamer.micromanager import open_source
    from streamer.micromanager.bridge import run_bridge
    from streamer.server import running_server

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received: finishing the frames already sent (Ctrl-C again to abort)",
                 signal.Signals(signum).name)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    base_dir = config.resolve().parent if config else None
    errors: tuple[type[BaseException], ...] = (*_EXPECTED_ERRORS, zmq.ZMQError)
    try:
        with contextlib.ExitStack() as stack:
            endpoints: dict[str, str] = {}
            if cfg.bridge.connect:
                try:
                    endpoints = json.loads(Path(cfg.bridge.connect).read_text())["endpoints"]
                    missing = {"input", "output", "control"} - set(endpoints)
                    if missing:
                        raise KeyError(", ".join(sorted(missing)))
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    _fail(f"{cfg.bridge.connect}: expected a `n2n serve --ready-file` JSON with 'endpoints' "
                          f"(input, output, control): {exc}")
            # the camera first: the server then compiles for its frame size before frames flow
            source = stack.enter_context(open_source(cfg.source, base_dir))
            if not cfg.bridge.connect:
                server = stack.enter_context(running_server(cfg.bridge.model, cfg.serve, warmup_shape=source.shape))
                endpoints = server.endpoints
                info = server.denoiser.info()
                console.print(f"serving {info['model']} with {info['engine']} ({info['precision']}) in "
                              f"{cfg.serve.mode} mode; viewers subscribe to {endpoints['output']}", highlight=False)
            total = cfg.bridge.frames
            console.print(f"bridging {total or 'until Ctrl-C'} frames of {source.shape[1]}x{source.shape[0]} from "
                          f"{source.camera!r}", highlight=False)

            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("denoised"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                          TimeElapsedColumn(), console=console, transient=True) as bar:
                task = bar.add_task("", total=total)

                def _progress(r: Any) -> None:
                    bar.update(task, completed=r.frames_denoised, description=f"(seen {r.frames_seen})")

                # until now Ctrl-C interrupts (compiling, connecting); from here it finishes cleanly
                signal.signal(signal.SIGINT, _on_signal)
                signal.signal(signal.SIGTERM, _on_signal)
                report = run_bridge(source, endpoints, total, cfg.bridge.out, cfg.source.timeout_s, stop, _progress)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: Micro-Manager released, server stopped[/yellow]")
        raise typer.Exit(code=130) from None
    except errors as exc:
        _fail(str(exc))
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    table = Table(title="bridge", show_header=False)
    for k, v in (("frames seen", report.frames_seen), ("denoised", report.frames_denoised),
                 ("dropped", f"{report.frames_dropped} by the server ({report.mode} mode), "
                             f"{report.missed_in_micromanager} overwritten in Micro-Manager's buffer"),
                 ("refused / unaccounted", f"{report.frames_failed} / {report.frames_unaccounted}"),
                 ("rate", f"{report.fps_in:.1f} frames/s in, {report.fps_out:.1f} out"),
                 ("latency", f"p50 {report.latency_ms_p50} ms, p99 {report.latency_ms_p99} ms (capture → denoised)"),
                 ("engine", report.engine), ("saved", report.out or "not saved")):
        table.add_row(k, str(v))
    out.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


@app.command()
def demo(
    quick: Annotated[bool | None, typer.Option("--quick/--full", help="--quick: under a minute, small frames and "
                                                                       "a few seconds of training.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder (default runs/demo).")] = None,
    dash: Annotated[bool | None, typer.Option("--dash/--no-dash", help="Show the live dashboard while bridging.")]
    = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """The whole product on the simulated Micro-Manager session: grab, train, serve, bridge live, report."""
    from n2n.demo import FULL, QUICK, run_demo
    from streamer.config import DemoConfig

    cfg = _load(DemoConfig, config, dry_run, quick=quick, out=str(out_dir) if out_dir else None, dash=dash)
    quick = cfg.quick
    out_dir = Path(cfg.out)
    settings = QUICK if quick else FULL
    try:
        report = run_demo(out_dir, settings, console=console, dashboard=cfg.dash)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: everything was shut down; partial results in {out_dir}[/yellow]")
        raise typer.Exit(code=130) from None
    except _EXPECTED_ERRORS as exc:
        _fail(str(exc))
    q, st, lv = report["quality"], report["stream"], report["live"]
    table = Table(title=f"n2n demo ({'quick' if quick else 'full'}) in {report['seconds']:.0f} s", show_header=False)
    rows = [
        ("grab", f"{report['grab']['frames']} frames at {report['grab']['fps']:.1f} frames/s "
                 f"({settings.size}×{settings.size}, {settings.exposure_ms:g} ms exposure)"),
        ("training", f"{report['train']['seconds']:.0f} s, exported {', '.join(report['train']['artifacts'])}"),
        ("PSNR vs truth", f"raw {q['psnr_raw_db']:.2f} dB → denoised {q['psnr_denoised_db']:.2f} dB "
                          f"({q['frames_scored']} bridged frames)"),
        ("engine", f"{st['engine']} ({st['device']}, {st['precision']})"),
        ("live stream", f"{lv['frames_seen']} seen at {lv['fps_in']:.1f} frames/s, {lv['frames_denoised']} denoised "
                        f"({lv['fps_out']:.1f} frames/s), {lv['frames_dropped']} dropped; latency p50 "
                        f"{lv['latency_ms_p50']} ms, p99 {lv['latency_ms_p99']} ms"),
        ("lossless", f"{st['frames_seen']} seen, {st['frames_denoised']} denoised, {st['frames_dropped']} dropped; "
                     f"{st['fps_in']:.1f} frames/s in, {st['fps_out']:.1f} out; latency p50 {st['latency_ms_p50']} ms,"
                     f" p95 {st['latency_ms_p95']} ms, p99 {st['latency_ms_p99']} ms (includes the queue)"),
        ("report", f"{out_dir}/: {', '.join(report['files'])}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


@app.command()
def bench(
    model: Annotated[Path | None, typer.Option("--model", help="Model folder made by `n2n train` "
                                                               "(or runs/demo/model).")] = None,
    size: Annotated[int | None, typer.Option(help="Square frame side in pixels (default 512).")] = None,
    engines: Annotated[str | None, typer.Option(help="'all' or a comma list of openvino, onnxruntime, torch.")]
    = None,
    precisions: Annotated[str | None, typer.Option(help="Comma list of fp32, auto, bf16, fp16.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per measurement (default 100).")] = None,
    overload_s: Annotated[float | None, typer.Option("--overload-s", help="Seconds of live-mode overload.")] = None,
    transport: Annotated[str | None, typer.Option(help="tcp or ipc.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per engine.")] = None,
    repeats: Annotated[int | None, typer.Option(help="Bare-engine repeats (medians reported).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Frames run before each timing.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report", help="Folder for report.json/.md and plots.")]
    = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Transport floor, each engine bare, end to end (lossless) and live overload, side by side."""
    from bench.suite import main as suite_main
    from streamer.config import BenchConfig

    cfg = _load(BenchConfig, config, dry_run, model=str(model) if model else None, size=size, engines=engines,
                precisions=precisions, frames=frames, overload_s=overload_s, transport=transport, threads=threads,
                repeats=repeats, warmup=warmup, json_path=str(json_path) if json_path else None,
                report=str(report_dir) if report_dir else None)
    if cfg.model is None:
        _fail("give the model to measure: --model runs/NAME (or model: in the config)")
    argv = ["--model", cfg.model, "--size", str(cfg.size), "--engines", cfg.engines, "--precisions",
            cfg.precisions, "--frames", str(cfg.frames), "--overload-s", str(cfg.overload_s), "--transport",
            cfg.transport, "--repeats", str(cfg.repeats), "--warmup", str(cfg.warmup)]
    if cfg.threads:
        argv += ["--threads", str(cfg.threads)]
    if cfg.json_path:
        argv += ["--json", cfg.json_path]
    if cfg.report:
        argv += ["--report", cfg.report]
    raise typer.Exit(code=suite_main(argv))


@app.command()
def frontier(
    models: Annotated[list[Path] | None, typer.Argument(help="Model folders made by `n2n train`.",
                                                         show_default=False)] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Noisy stack to score.")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="Its clean reference.")] = None,
    sizes: Annotated[str | None, typer.Option("--sizes", help="Comma list of frame sides for speed "
                                                               "(default 512,2048).")] = None,
    precisions: Annotated[str | None, typer.Option(help="Comma list of fp32, bf16, fp16, int8.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per speed measurement (default 100).")] = None,
    frames_large: Annotated[int | None, typer.Option("--frames-large", help="... at 1024 px and above (8).")]
    = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Score only the first N frames.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per engine.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report", help="Folder for frontier.json/.md/.png "
                                                                    "(default runs/frontier).")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Quality against speed: every model at every precision (PSNR, GFLOP, bare and end-to-end frames/s)."""
    from bench.frontier import run_frontier, table
    from streamer.config import FrontierConfig

    try:
        size_list = [int(v) for v in sizes.split(",") if v.strip()] if sizes else None
    except ValueError:
        _fail(f"--sizes expects a comma list of integers (e.g. 512,2048), got {sizes!r}")
    cfg = _load(FrontierConfig, config, dry_run, models=[str(m) for m in models] if models else None,
                data=str(data) if data else None, reference=str(reference) if reference else None,
                sizes=size_list,
                precisions=precisions, frames=frames, frames_large=frames_large, max_frames=max_frames,
                threads=threads, json_path=str(json_path) if json_path else None,
                report=str(report_dir) if report_dir else None)
    if not cfg.models or not cfg.data or not cfg.reference:
        _fail("give model folders, --data X.tif and --reference X_gt.tif: n2n frontier runs/A runs/B --data X.tif "
              "--reference X_gt.tif (or models:, data:, reference: in the config)")
    try:
        report = run_frontier([Path(m) for m in cfg.models], Path(cfg.data), Path(cfg.reference), cfg.sizes,
                              [p.strip() for p in cfg.precisions.split(",") if p.strip()], cfg.frames,
                              cfg.frames_large, threads=cfg.threads, max_frames=cfg.max_frames,
                              progress=lambda text: console.print(text, highlight=False),
                              report_dir=Path(cfg.report) if cfg.report else None)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:  # TimeoutError is an OSError
        _fail(str(exc))
    out.print(table(report))
    if cfg.json_path:
        Path(cfg.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json_path).write_text(json.dumps(report, indent=2) + "\n")
    if cfg.report:
        out.print(f"report: {cfg.report}/frontier.md, frontier.png, frontier.json")


@app.command()
def dash(
    stats: Annotated[str | None, typer.Option("--stats", help="The server's stats address "
                                                              "(default tcp://127.0.0.1:5558).")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Live terminal dashboard for a running `n2n serve` (Ctrl-C quits)."""
    from streamer.config import DashConfig
    from streamer.dashboard import run_dashboard

    cfg = _load(DashConfig, config, dry_run, stats=stats)
    raise typer.Exit(code=run_dashboard(cfg.stats, console=out))


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``n2n``)."""
    args = expand_multi_value(sys.argv[1:] if argv is None else argv)
    app(args=args, prog_name="n2n")
