"""Around the product: ``n2n demo`` (all of it on the simulated session), ``n2n bench`` and ``n2n frontier``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from n2n.command import Command, ConfigOpt, DryRunOpt, console, out
from n2n.errors import UserError, user_errors

__all__ = ["BENCH", "DEMO", "FRONTIER", "bench", "demo", "frontier"]

DEMO = Command("n2n.demo:DemoConfig", flags={"--quick": "quick", "--out": "out", "--dash": "dash",
                                                   "--view": "view", "--mda": "mda"})


@DEMO
def demo(
    quick: Annotated[bool | None, typer.Option("--quick/--full", help="--quick: under a minute, small frames and "
                                                                       "a few seconds of training.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder.")] = None,
    dash: Annotated[bool | None, typer.Option("--dash/--no-dash", help="Show the live dashboard while bridging.")]
    = None,
    view: Annotated[bool | None, typer.Option("--view/--no-view", help="Open napari on the live stage: raw | "
                                              "denoised (the viewer extra).")] = None,
    mda: Annotated[bool | None, typer.Option("--mda/--single", help="--mda: the multi-channel session (2 channels × "
                                             "2 positions × z): grab bursts, a model per channel, acquire with every "
                                             "frame denoised, PSNR per stream.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """The whole product on the simulated Micro-Manager session: grab, train, serve, bridge live, report."""
    from n2n.demo import FULL, QUICK, run_demo

    cfg = DEMO.load(config, dry_run, {"--quick": quick, "--out": out_dir, "--dash": dash, "--view": view,
                                      "--mda": mda})
    if cfg.mda:
        from n2n.demo_mda import demo_mda_command

        return demo_mda_command(cfg)
    if cfg.view:  # before minutes of grabbing and training
        from n2n.commands.viewer import require_viewer

        require_viewer()
    out_dir = Path(cfg.out)
    settings = QUICK if cfg.quick else FULL
    try:
        with user_errors():
            report = run_demo(out_dir, settings, console=console, dashboard=cfg.dash, viewer=cfg.view)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: everything was shut down; partial results in {out_dir}[/yellow]",
                      highlight=False)
        raise typer.Exit(code=130) from None
    q, st, lv = report["quality"], report["stream"], report["live"]
    table = Table(title=f"n2n demo ({'quick' if cfg.quick else 'full'}) in {report['seconds']:.0f} s",
                  show_header=False)
    rows = [
        ("grab", f"{report['grab']['frames']} frames at {report['grab']['fps']:.1f} frames/s "
                 f"({settings.size}×{settings.size}, {settings.exposure_ms:g} ms exposure)"),
        ("training", _train_row(report["train"])),
        ("PSNR vs truth", f"raw {q['psnr_raw_db']:.2f} dB → Gaussian σ={q['gaussian_sigma']:g} "
                          f"{q['psnr_gaussian_db']:.2f} dB → denoised {q['psnr_denoised_db']:.2f} dB "
                          f"({q['frames_scored']} bridged frames)"),
        ("engine", f"{st['engine']} ({st['device']}, {st['precision']})"),
        ("CPU", _cpu_row(report["machine"])),
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
    if q["psnr_denoised_db"] < q["psnr_gaussian_db"]:
        tr = report["train"]
        console.print(f"[yellow]the model scored below the Gaussian filter here: it trained {tr['epochs']} of "
                      f"{tr['epochs_planned']} epochs in its {tr['budget_seconds']:g} s (a busy machine trains fewer); "
                      + ("`n2n demo` (no --quick) gives it 90 s" if cfg.quick else "train longer with `n2n train "
                         f"--resume --config {tr['run']}/config.yaml --data {out_dir}/grab.ome.tif --out {tr['run']} "
                         "--epochs 60 --minutes 10`") + "[/yellow]", highlight=False, soft_wrap=True)


def _train_row(train: dict) -> str:
    """What training reached in its time budget, and the export."""
    row = (f"{train['epochs']} of {train['epochs_planned']} epochs in {train['training_seconds']:.0f} s (budget "
           f"{train['budget_seconds']:g} s")
    row += ", the rest did not fit here)" if train["epochs"] < train["epochs_planned"] else ")"
    return row + f"; with the export {train['seconds']:.0f} s: {', '.join(train['artifacts'])}"


def _cpu_row(machine: dict) -> str:
    """The machine and how busy other processes kept it during the live stage (its figures depend on it)."""
    live = machine["live_stage"]
    row = f"{machine['cpu_count']} × {machine['cpu']}"
    if live["others_cpu_pct"] is None:
        return row
    row += (f"; other processes used {live['others_cpu_pct']:.0f}% of it during the live stage (load average "
            f"{live['loadavg_start'][0]:.1f} at its start)")
    return row + (": busy, the live figures are this machine's under that load" if live["busy"] else "")


BENCH = Command("bench.config:BenchConfig", flags={
    "--model": "model", "--size": "size", "--engine": "engines", "--precision": "precisions", "--frames": "frames",
    "--overload-s": "overload_s", "--transport": "transport", "--threads": "threads", "--repeats": "repeats",
    "--warmup": "warmup", "--json": "json_path", "--report": "report"},
    defaults={"--threads": "the engine's (all cores)", "--json": "not written", "--report": "not written"},
    deprecated={"--engines": "--engine", "--precisions": "--precision"})


@BENCH
def bench(
    model: Annotated[Path | None, typer.Option("--model", help="Model folder made by `n2n train` "
                                                               "(or runs/demo/model).")] = None,
    size: Annotated[int | None, typer.Option(help="Square frame side in pixels.")] = None,
    engine: Annotated[str | None, typer.Option(help="'all' or a comma list of openvino, onnxruntime, torch.")]
    = None,
    precision: Annotated[str | None, typer.Option(help="Comma list of fp32, auto, bf16, fp16, int8.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per measurement.")] = None,
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
    cfg = BENCH.load(config, dry_run, {
        "--model": model, "--size": size, "--engine": engine, "--precision": precision, "--frames": frames,
        "--overload-s": overload_s, "--transport": transport, "--threads": threads, "--repeats": repeats,
        "--warmup": warmup, "--json": json_path, "--report": report_dir})
    if cfg.model is None:
        raise UserError("--model: expected the model folder to measure (runs/NAME, or model: in the config), "
                        "got none")
    from bench.command import progress_to_stderr
    from bench.suite import run_from_config, table

    with user_errors():
        report = run_from_config(cfg, progress=progress_to_stderr)
    out.print(table(report), markup=False, highlight=False, soft_wrap=True)


FRONTIER = Command("bench.config:FrontierConfig", flags={
    "MODELS": "models", "--data": "data", "--reference": "reference", "--size": "sizes", "--precision": "precisions",
    "--frames": "frames", "--frames-large": "frames_large", "--max-frames": "max_frames", "--threads": "threads",
    "--json": "json_path", "--report": "report"},
    defaults={"--max-frames": "all", "--threads": "the engine's (all cores)", "--json": "not written"},
    deprecated={"--sizes": "--size", "--precisions": "--precision"})


@FRONTIER
def frontier(
    models: Annotated[list[Path] | None, typer.Argument(help="Model folders made by `n2n train`.",
                                                         show_default=False)] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Noisy stack to score.")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="Its clean reference.")] = None,
    size: Annotated[str | None, typer.Option("--size", help="Comma list of square frame sides for speed.")] = None,
    precision: Annotated[str | None, typer.Option(help="Comma list of fp32, bf16, fp16, int8.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per speed measurement.")] = None,
    frames_large: Annotated[int | None, typer.Option("--frames-large", help="... at 1024 px and above.")] = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Score only the first N frames.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per engine.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report", help="Folder for frontier.json/.md/.png.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Quality against speed: every model at every precision (PSNR, GFLOP, bare and end-to-end frames/s)."""
    from bench.frontier import run_frontier, table

    try:
        sizes = [int(v) for v in size.split(",") if v.strip()] if size else None
    except ValueError:
        raise UserError(f"--size: expected a comma list of integers (e.g. 512,2048), got {size!r}") from None
    cfg = FRONTIER.load(config, dry_run, {
        "MODELS": models, "--data": data, "--reference": reference, "--size": sizes, "--precision": precision,
        "--frames": frames, "--frames-large": frames_large, "--max-frames": max_frames, "--threads": threads,
        "--json": json_path, "--report": report_dir})
    if not cfg.models or not cfg.data or not cfg.reference:
        raise UserError("expected model folders, --data X.tif and --reference X_gt.tif (or models:, data:, "
                        "reference: in the config): n2n frontier runs/A runs/B --data X.tif --reference X_gt.tif")
    with user_errors():
        report = run_frontier([Path(m) for m in cfg.models], Path(cfg.data), Path(cfg.reference), cfg.sizes,
                              [p.strip() for p in cfg.precisions.split(",") if p.strip()], cfg.frames,
                              cfg.frames_large, threads=cfg.threads, max_frames=cfg.max_frames,
                              progress=lambda text: console.print(text, highlight=False, markup=False),
                              report_dir=Path(cfg.report) if cfg.report else None)
    out.print(table(report), markup=False, highlight=False, soft_wrap=True)
    with user_errors():
        if cfg.json_path:
            Path(cfg.json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.json_path).write_text(json.dumps(report, indent=2) + "\n")
    if cfg.report:
        out.print(f"report: {cfg.report}/frontier.md, frontier.png, frontier.json", highlight=False)
