"""Recorded data: ``n2n denoise`` (OME-TIFF / TIFF, NDTiff, OME-Zarr in; OME-TIFF or OME-Zarr out)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from n2n.command import AveragedOpt, Command, ConfigOpt, DryRunOpt, console, out
from n2n.errors import UserError, one_line, user_errors

__all__ = ["DENOISE", "denoise"]

DENOISE = Command("streamer.offline.config:DenoiseConfig", flags={
    "--averaged": "averaged",
    "--engine": "engine", "--precision": "precision", "--retime": "retime", "--device": "device",
    "--threads": "threads", "--dtype": "dtype", "--channel": "channel", "--workers": "workers",
    "--scheduler": "scheduler", "--overwrite": "overwrite", "--trust-code": "trust_code",
    "--denoise-again": "denoise_again", "--skip-denoised": "skip_denoised"},
    defaults={"--threads": "the cores shared among the workers", "--channel": "every plane",
              "--scheduler": "a LocalCluster when --workers > 1", "--json": "not written"})


@DENOISE
def denoise(
    input_path: Annotated[Path, typer.Argument(
        metavar="INPUT", help="Recorded dataset: OME-TIFF/TIFF file, OME-Zarr folder (.zarr) or Micro-Manager "
                              "NDTiff dataset folder.", show_default=False)],
    model: Annotated[list[str], typer.Option(
        "--model", metavar="[CHANNEL=]MODEL", help="Model folder made by `n2n train`, or a BioImage Model "
                                             "Zoo package (.zip), for every channel. A model per channel: repeat "
                                             "as --model NAME=FOLDER (a channel's name in the file, else its index), "
                                             "or give a models.yaml; a channel without a model is written as it "
                                             "is (raw).")],
    output: Annotated[Path, typer.Option("--out", help="Output: .ome.tif/.tif (OME-TIFF) or .zarr/.ome.zarr "
                                                        "(OME-Zarr); same axes and metadata as the input.")],
    engine: Annotated[str | None, typer.Option(help="auto, openvino, onnxruntime or torch.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32, bf16, fp16 or int8 (decided once, recorded).")]
    = None,
    retime: Annotated[bool | None, typer.Option("--retime", help="Precision auto: time the precisions again instead "
                                                "of taking the choice recorded for this machine.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    threads: Annotated[int | None, typer.Option(help="Engine threads per worker.")] = None,
    dtype: Annotated[str | None, typer.Option(help="same (the input's, clipped and rounded) or float32.")] = None,
    channel: Annotated[str | None, typer.Option(help="Denoise this channel only (index or name); copy the others.")]
    = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes; more than 1 runs a Dask LocalCluster.")]
    = None,
    scheduler: Annotated[str | None, typer.Option(help="An existing Dask scheduler, tcp://HOST:PORT.")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing output.")] = None,
    denoise_again: Annotated[bool | None, typer.Option("--denoise-again", help="Denoise planes the input marks as "
                                                       "denoised already (n2n-denoised: true) anyway; without it "
                                                       "such an input is refused.")] = None,
    skip_denoised: Annotated[bool | None, typer.Option("--skip-denoised", help="Denoise only the planes not marked "
                                                       "denoised already; copy the marked ones as they are.")] = None,
    trust_code: Annotated[bool | None, typer.Option("--trust-code", help="Run a TorchScript file this install did "
                                                    "not write (a downloaded model's): it is a program.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")] = None,
    averaged: AveragedOpt = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Denoise a recorded dataset with a trained model, or each channel with its own (--model DAPI=runs/dapi
    --model GFP=runs/gfp); rerun the same command after an interruption to continue where it stopped. Planes
    already denoised by n2n (an n2n denoise output, the denoised channel of an n2n bridge recording, a
    pycromanager-hook recording) are refused unless --denoise-again or --skip-denoised."""
    cfg = DENOISE.load(config, dry_run, {
        "--engine": engine, "--precision": precision, "--retime": retime, "--averaged": averaged,
        "--device": device, "--threads": threads,
        "--dtype": dtype, "--channel": channel, "--workers": workers, "--scheduler": scheduler,
        "--overwrite": overwrite, "--trust-code": trust_code, "--denoise-again": denoise_again,
        "--skip-denoised": skip_denoised})
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from streamer.offline import DenoiseInterrupted, IncompleteInput
    from streamer.offline import denoise as run

    class Rate(ProgressColumn):
        """Planes per second over this run (resumed planes are not counted)."""

        def render(self, task: object) -> Text:
            speed = getattr(task, "speed", None)
            return Text(f"{speed:.1f} planes/s" if speed else "… planes/s")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TextColumn("ETA"),
               TimeRemainingColumn())
    try:
        with user_errors(), contextlib.ExitStack() as stack:
            bars: dict[str, TaskID] = {}
            progress: list[Progress] = []  # shown from the first plane on: a refused input prints one line only

            def report(done: int, total: int, stage: str) -> None:
                if not progress:
                    progress.append(stack.enter_context(Progress(*columns, console=console, transient=True)))
                if stage not in bars:
                    bars[stage] = progress[0].add_task(stage, total=total, completed=done)
                progress[0].update(bars[stage], completed=done)

            try:
                summary, incomplete = run(input_path, model, output, cfg, report), None
            except IncompleteInput as exc:  # a damaged input: the output is written, the missing planes listed
                summary, incomplete = exc.summary, exc
    except DenoiseInterrupted as exc:
        console.print(f"[yellow]interrupted: {exc}[/yellow]", highlight=False)
        raise typer.Exit(code=130) from None
    if json_path is not None:
        with user_errors(prefix=f"--json {json_path}: "):
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(summary, indent=2) + "\n")
    if incomplete is not None:
        raise UserError(one_line(str(incomplete)))
    table = Table(title=f"n2n denoise: {input_path.name} → {output.name}", show_header=False)
    rate = f", {summary['planes_per_s']} planes/s" if summary["planes_per_s"] else ""
    table.add_row("planes", f"{summary['planes']} ({summary['planes_denoised']} denoised this run, "
                            f"{summary['planes_resumed']} done before{rate})")
    if summary["planes_marked_denoised"]:
        what = ("copied as they are" if summary["planes_copied_marked"] else "denoised again (--denoise-again)")
        table.add_row("marked", f"{summary['planes_marked_denoised']} denoised already in the input: {what}")
    models, engines = summary.get("models") or {}, summary.get("engines") or {}
    if len(models) > 1 or summary.get("channels_no_model"):
        table.add_row("models", ", ".join(f"{c} → {m if m else 'raw (no model)'}" for c, m in models.items()))
    how = (", ".join(f"{e['engine']} at {e['precision']} ({m})" for m, e in engines.items())
           if len(engines) > 1 else f"{summary['engine']} at {summary['precision']}")
    table.add_row("engine", f"{how}, {summary['workers']} worker(s) ({summary['scheduler']})")
    table.add_row("output", f"{output} ({summary['format']}, {summary['dtype']})")
    out.print(table)
