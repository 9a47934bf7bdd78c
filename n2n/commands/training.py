"""Frames → model: ``n2n simulate``, ``n2n train``, ``n2n export``, ``n2n evaluate``."""

from __future__ import annotations

import contextlib
import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from n2n.command import AveragedOpt, Command, ConfigOpt, DryRunOpt, console, out, parse_settings
from n2n.errors import UserError, user_errors

__all__ = ["AVERAGE", "EVALUATE", "EXPORT", "SIMULATE", "TRAIN", "average", "evaluate", "export", "simulate",
           "train"]

SIMULATE = Command("trainer.config:SimulateConfig", flags={
    "--frames": "frames", "--size": ("camera.height", "camera.width"), "--exposure-ms": "camera.exposure_ms",
    "--seed": "camera.seed"}, defaults={"--truth": "not written"})


@SIMULATE
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
    cfg = SIMULATE.load(config, dry_run, {"--frames": frames, "--size": size, "--exposure-ms": exposure_ms,
                                          "--seed": seed})
    import tifffile
    from rich.progress import Progress

    from streamer.sources import simulate_stack

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=cfg.frames)
        raw, gt = simulate_stack(cfg.camera, cfg.frames, lambda done, _: progress.update(task, completed=done))
    with user_errors():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out_path, raw, ome=True, metadata={"axes": "TYX"})
        sidecar = {"camera": cfg.camera.model_dump(mode="json"), "frames": cfg.frames, "raw": out_path.name}
        if truth is not None:
            truth.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(truth, gt, ome=True, metadata={"axes": "TYX"})
            sidecar["truth"] = truth.name
        out_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    console.print(f"wrote {cfg.frames} frames of {raw.shape[1]}x{raw.shape[2]} to {out_path}"
                  + (f" and truth to {truth}" if truth else ""), highlight=False)


TRAIN = Command("trainer.config:TrainConfig", flags={
    "--target": "mode", "--epochs": "optim.epochs", "--steps-per-epoch": "optim.steps_per_epoch",
    "--minutes": "optim.max_minutes", "--device": "optim.device", "--seed": "optim.seed",
    "--data": "data.source", "--channel": "data.channel"},
    defaults={"--data": "none: data.source 'simulated' in the config takes the simulated camera",
              "--reference": "none", "--minutes": "no limit", "--set": "none",
              "--channel": "none: single-channel files"},
    deprecated={"--mode": "--target", "--max-minutes": "--minutes"})


@TRAIN
def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder to write (runs/NAME).")],
    data: Annotated[list[Path] | None, typer.Option("--data", help="Noisy stack(s), TIFF/OME-TIFF (T, H, W).")]
    = None,
    reference: Annotated[list[Path] | None, typer.Option("--reference", help="Clean reference per stack: "
                                                          "targets with --target supervised, else only scored.")]
    = None,
    target: Annotated[str | None, typer.Option("--target", help="What the network learns to predict: n2n "
                                               "(the next noisy frame) or supervised (the clean reference).")]
    = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (optim.epochs).")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Optimiser steps per epoch.")] = None,
    minutes: Annotated[float | None, typer.Option(help="Train for at most this many minutes (this session's): "
                                                  "the epochs that fit are planned and the learning rate annealed to "
                                                  "end there; it never starts an epoch that would end later.")]
    = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    channel: Annotated[str | None, typer.Option(help="Train on this channel of multi-channel files (an index or "
                                                "the OME channel name): one model per channel.")] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel", help="Train a model for every channel of the "
                                              "multi-channel --data, each in OUT/CHANNEL, and write OUT/models.yaml "
                                              "(the model set: n2n serve --model OUT/models.yaml); --minutes is "
                                              "each channel's.")] = False,
    seed: Annotated[int | None, typer.Option(help="Seeds weights, patches and augmentation.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any config key: --set model.depth=3 "
                                                   "--set 'model.filters=[4,16,32,64]' (YAML values; repeatable).")]
    = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's checkpoint (with "
                                         "--epochs N: train a finished run longer, to N epochs in all).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out (its model and "
                                            "checkpoint are deleted first).")] = False,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Fit a Noise2Noise (or supervised) U-Net and export it to ONNX."""
    cfg = TRAIN.load(config, dry_run, {
        "--target": target, "--epochs": epochs, "--steps-per-epoch": steps_per_epoch, "--minutes": minutes,
        "--device": device, "--seed": seed, "--data": "files" if data else None, "--channel": channel},
        parse_settings(set_))
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it: expected one, got both")
    if per_channel:
        _train_per_channel(cfg, out_dir, data or [], reference or [], overwrite, resume, channel)
        return
    if not resume:
        _refuse_existing(out_dir, overwrite)
    from trainer.bright import BrightInterrupted
    from trainer.run import TrainingInterrupted, run_training

    def again(*extra: str) -> str:
        cmd = ["n2n", "train", "--resume", "--config", str(out_dir / "config.yaml"), "--out", str(out_dir), *extra]
        for flag, paths in (("--data", data), ("--reference", reference)):
            if paths:
                cmd += [flag, *map(str, paths)]
        return shlex.join(cmd)

    try:
        with user_errors():
            card = run_training(cfg, out_dir, data or [], reference or [], resume=resume, console=console,
                                before_training=(lambda: _clear_old_run(out_dir)) if overwrite else None)
    except BrightInterrupted:
        console.print(f"[yellow]interrupted while training the bright network: the first network is finished and "
                      f"serves every frame ({out_dir}: n2n serve --model {out_dir} serves it); to make the bright "
                      f"network too: {again()}[/yellow]", highlight=False, soft_wrap=True)
        raise typer.Exit(code=130) from None
    except TrainingInterrupted as exc:
        t = exc.card.training
        console.print(f"[yellow]interrupted after {t['epochs']} of {cfg.optim.epochs} epochs: the best so far "
                      f"(epoch {t['best_epoch']}) is exported, a usable run marked partial ({out_dir}: n2n serve "
                      f"--model {out_dir} serves it); to finish it: {again()}[/yellow]", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:
        if (out_dir / "checkpoint.pt").is_file():
            console.print(f"[yellow]interrupted; to continue: {again()}[/yellow]", highlight=False, soft_wrap=True)
        else:
            console.print("[yellow]interrupted before the first epoch finished: nothing to resume, nothing "
                          "left[/yellow]")
        raise typer.Exit(code=130) from None
    t = card.training
    table = Table(title=f"trained {out_dir}", show_header=False)
    table.add_row("mode", t["mode"])
    table.add_row("epochs (best)", f"{t['epochs']} ({t['best_epoch']}), {t['stopped']}")
    table.add_row("time", f"{t['seconds']:.0f} s on {t['device']} ({t['precision']})")
    table.add_row("normalisation", card.normalization.describe())
    aug = t.get("config", {}).get("data", {}).get("exposure_augment")
    if aug:
        table.add_row("exposures trained", f"{aug[0]:g}x to {aug[1]:g}x the recorded light")
    if card.bright_expert is not None:
        from streamer.core.card import ModelCard

        be = card.bright_expert
        bright = ModelCard.load(out_dir / be.path)
        bm, bt = bright.metrics, bright.training
        score = (f"validation {bm['val_psnr']:.2f} dB (raw {bm['val_psnr_raw']:.2f})" if "val_psnr" in bm
                 else f"validation loss {bm.get('val_loss', float('nan')):.4g}")
        table.add_row("bright network", f"serves frames >= {be.serves_from:g}x as bright (trained at {be.band[0]:g}x "
                      f"to {be.band[1]:g}x): {bt['epochs']} epoch(s), {bt['seconds']:.0f} s; {score} on sums of "
                      f"{bt['data'].get('summed_frames')} frames; served in float32")
    if card.quantization is not None:
        table.add_row("INT8", card.quantization.reason)
    from trainer.gain import gain_summary

    gain, gain_warning = gain_summary(card.metrics)
    m = card.metrics
    if "val_psnr" in m and "val_psnr_raw" in m:  # in dB against the reference, as a microscopist reads it
        table.add_row("against the reference", f"denoised {m['val_psnr']:.2f} dB PSNR, raw {m['val_psnr_raw']:.2f} dB "
                      f"({m['val_psnr'] - m['val_psnr_raw']:+.2f} dB)"
                      + (f", SSIM {m['val_ssim']:.3f}" if "val_ssim" in m else "") + ", on the held-out rows")
    if gain is not None:
        table.add_row("estimated gain over raw", gain)
    table.add_row("files", ", ".join(sorted(p.name for p in out_dir.iterdir() if p.is_file())))
    table.add_row("losses", f"validation {m.get('val_loss', float('nan')):.4g} (the Noise2Noise loss that picked the "
                  "best epoch; all figures in model.json)")
    out.print(table)
    if gain_warning is not None:
        console.print(f"[bold yellow]warning: {gain_warning}[/bold yellow]", highlight=False, soft_wrap=True)
    for line in next_steps(out_dir, t.get("data", {}), data or [], reference or []):
        console.print(line, highlight=False, soft_wrap=True)


def _train_per_channel(cfg: Any, out_dir: Path, data: list[Path], reference: list[Path], overwrite: bool,
                       resume: bool, channel: str | None) -> None:
    """``n2n train --per-channel``: a run per channel of the (multi-channel) data, in ``out_dir/CHANNEL``, then the
    model set ``out_dir/models.yaml`` that routes each channel to its run."""
    import functools

    from streamer.core.filenames import safe_name
    from streamer.core.modelset import ModelSet
    from streamer.sources.tiff import stack_channels
    from trainer.run import TrainingInterrupted, run_training

    if channel is not None:
        raise UserError(f"--per-channel trains every channel and --channel {channel} one: expected one, got both")
    if not data:
        raise UserError("--per-channel: expected multi-channel --data (an OME-TIFF with a C axis), got none")
    with user_errors():
        labels = stack_channels(data[0])
        for other in data[1:]:
            if stack_channels(other) != labels:
                raise UserError(f"--per-channel: expected the same channels in every --data file ({labels} in "
                                f"{data[0]}), got {stack_channels(other)} in {other}")
    if not labels:
        raise UserError(f"--per-channel: expected a multi-channel file (a C axis of 2 or more), got {data[0]} with "
                        "one channel (train it without --per-channel)")
    folders = {label: safe_name(label) for label in labels}
    if len(set(folders.values())) != len(folders):
        raise UserError(f"--per-channel: the channel names {labels} make the same folder name twice")
    if not resume:
        for folder in folders.values():
            _refuse_existing(out_dir / folder, overwrite)
    console.print(f"training a model for each of {len(labels)} channels ({', '.join(labels)}) into "
                  f"{out_dir}/CHANNEL", highlight=False)
    done: dict[str, str] = {}
    for label, folder in folders.items():
        run_dir = out_dir / folder
        one = cfg.model_copy(update={"data": cfg.data.model_copy(update={"channel": label})})
        console.print(f"channel {label} → {run_dir}", highlight=False)
        try:
            with user_errors():
                run_training(one, run_dir, data, reference, resume=resume and (run_dir / "checkpoint.pt").is_file(),
                             console=console,
                             before_training=functools.partial(_clear_old_run, run_dir) if overwrite else None)
        except (TrainingInterrupted, KeyboardInterrupt):
            finished = ", ".join(done) or "none"
            console.print(f"[yellow]interrupted while training channel {label} (finished: {finished}); "
                          f"models.yaml is not written: rerun with --resume to go on[/yellow]", highlight=False)
            raise typer.Exit(code=130) from None
        done[label] = folder
    models = ModelSet(done)  # relative folders: read beside the file
    with user_errors():
        path = models.save(out_dir / "models.yaml")
    table = Table(title=f"trained {out_dir} (a model per channel)", show_header=False)
    for label, folder in done.items():
        card = json.loads((out_dir / folder / "model.json").read_text())
        m = card.get("metrics", {})
        score = (f", denoised {m['val_psnr']:.2f} dB against {m['val_psnr_raw']:.2f} raw"
                 if "val_psnr" in m and "val_psnr_raw" in m else "")
        table.add_row(label, f"{out_dir / folder}: {card['training']['epochs']} epochs{score}")
    table.add_row("model set", str(path))
    out.print(table)
    console.print("next: serve it (each channel by its model): " + shlex.join(["n2n", "serve", "--model", str(path)])
                  + "   or acquire with it: " + shlex.join(["n2n", "acquire", "--model", str(path), "--mda",
                                                            "SEQUENCE.yaml"]), highlight=False, soft_wrap=True)


def next_steps(run: Path, provenance: dict, data: list[Path], reference: list[Path]) -> list[str]:
    """What to run after ``n2n train``, as exact commands for this run folder."""
    model = ["--model", str(run)]
    if provenance.get("source") == "simulated":  # the frames and the simulator's truth are in the run folder
        data, reference = [run / "frames.tif"], [run / "truth.tif"]
    lines = []
    if data and reference:
        lines.append("next: score it against the reference: " + shlex.join(
            ["n2n", "evaluate", *model, "--data", str(data[0]), "--reference", str(reference[0])]))
    elif data:
        lines.append("next: check it on frames it did not train on (no reference needed): " + shlex.join(
            ["n2n", "evaluate", *model]) + " --data OTHER_FRAMES.tif  (add --reference CLEAN.tif where one exists)")
    else:
        lines.append("next: score it where a clean reference exists: " + shlex.join(
            ["n2n", "evaluate", *model]) + " --data NOISY.tif --reference CLEAN.tif")
    lines.append("then denoise live: " + shlex.join(["n2n", "serve", *model]) + "   or from Micro-Manager: "
                 + shlex.join(["n2n", "bridge", *model]))
    return lines


RUN_FILES = ("model.json", "checkpoint.pt", "model.pt")
"""A run folder's own files: one holding any of them is a run, finished (``model.json``) or not."""
OLD_RUN_FILES = (*RUN_FILES, "model.onnx", "model.ts", "model_int8.xml", "model_int8.bin", "precision_choice.json")
"""What ``--overwrite`` deletes of the old run, by these names only (never a name an old card lists: a copied card
could name the user's data), once the new run's data has been read."""


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """``n2n train --out`` never replaces a run silently: refused (one line, the ways on) unless ``--overwrite``."""
    found = [n for n in RUN_FILES if (out_dir / n).is_file()]
    if not found or overwrite:
        return
    finished = "model.json" in found
    what = "a finished run" if finished else "an unfinished run (a checkpoint, no model)"
    if finished and _partial(out_dir / "model.json"):
        what, finished = "a partial run (interrupted; its best epoch so far exported)", False
    raise UserError(f"--out {out_dir}: holds {what}; expected a new folder: `--resume` continues it"
                    + (" (with --epochs N: to N epochs in all)" if finished else "")
                    + ", `--overwrite` replaces it, or give another --out")


def _partial(card: Path) -> bool:
    """Whether a run folder's card says the run was interrupted (``training.partial``); False if unreadable."""
    try:
        return bool(json.loads(card.read_text()).get("training", {}).get("partial"))
    except (OSError, ValueError, AttributeError):
        return False


def _clear_old_run(out_dir: Path) -> None:
    """``--overwrite``: the old run's model files and checkpoint go (the new run's data is read by then, so a
    failed start keeps the old run); its config.yaml is rewritten by the new one."""
    for name in OLD_RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    bright = out_dir / "bright"  # the old run's bright network (a run folder of the same files), by name too
    if bright.is_dir() and not bright.is_symlink():
        for name in OLD_RUN_FILES:
            (bright / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # (something else in it: kept)
            bright.rmdir()


EXPORT = Command("trainer.config:ExportConfig", flags={
    "--format": "format", "--opset": "opset", "--max-loss-db": "quantize.max_loss_db", "--out": "bioimageio.out",
    "--sample": "bioimageio.sample", "--author": "bioimageio.authors", "--license": "bioimageio.license"},
    defaults={"--out": "<run>/<run name>.bioimageio.zip", "--sample": "the run's first training stack",
              "--author": "this computer's user name"})


@EXPORT
def export(
    model: Annotated[Path, typer.Option("--model", help="Run folder made by `n2n train`.")],
    format: Annotated[str | None, typer.Option("--format", help="onnx, torchscript, int8 (OpenVINO, checked) or "
                                               "bioimageio (a BioImage Model Zoo package).")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (>= 18).")] = None,
    max_loss_db: Annotated[float | None, typer.Option(help="int8: keep it only if it loses at most this (dB).")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="bioimageio: the package to write (.zip).")] = None,
    sample: Annotated[Path | None, typer.Option("--sample", help="bioimageio: a TIFF whose first frames are the "
                                                "package's test input.")] = None,
    author: Annotated[list[str] | None, typer.Option("--author", help="bioimageio: an author (repeat for more).")]
    = None,
    license: Annotated[str | None, typer.Option("--license", help="bioimageio: SPDX licence of the model.")] = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Export a trained model (checked against PyTorch, or for int8 on held-out frames; refused beyond the limit),
    or package it for the BioImage Model Zoo (validated with bioimageio.spec)."""
    cfg = EXPORT.load(config, dry_run, {
        "--format": format, "--opset": opset, "--max-loss-db": max_loss_db,
        "--out": str(out_path) if out_path is not None else None, "--sample": str(sample) if sample else None,
        "--author": author or None, "--license": license})
    from trainer.card import add_artifact
    from trainer.export import ONNX_NAME, TORCHSCRIPT_NAME, export_onnx, export_torchscript
    from trainer.inference import load_run

    with user_errors():
        if cfg.format == "bioimageio":
            from trainer.zoo import export_bioimageio

            zoo = cfg.bioimageio
            target = Path(zoo.out) if zoo.out else model / f"{model.resolve().name}.bioimageio.zip"
            with console.status("packaging for the BioImage Model Zoo (exports, test tensors, validation)"):
                written = export_bioimageio(model, target, zoo.sample, zoo.authors or None, zoo.license, zoo.name)
            out.print(f"wrote {written} (validated with bioimageio.spec; test it with `bioimageio test {written}`; "
                      f"serve it with `n2n serve --model {written}`)", highlight=False)
            return
        if cfg.format == "int8":
            from trainer.run import quantize_run, training_data

            train_cfg, stacks, refs = training_data(model)
            train_cfg.quantize = cfg.quantize
            q = quantize_run(model, train_cfg, stacks, refs)
            if q.status != "kept":
                raise UserError(f"no INT8 export: {q.reason}")
            out.print(f"wrote {model / 'model_int8.xml'} ({q.reason})", highlight=False)
            return
        m = load_run(model)
        if cfg.format == "onnx":
            info = export_onnx(m.net, model / ONNX_NAME, cfg.opset, cfg.check_size, cfg.max_rel_error)
        else:
            info = export_torchscript(m.net, model / TORCHSCRIPT_NAME, cfg.check_size, cfg.max_rel_error)
        add_artifact(model, info)
    out.print(f"wrote {model / info.path} (relative error vs PyTorch {info.parity_rel_error:.2g})", highlight=False)


EVALUATE = Command("trainer.config:EvaluateConfig", flags={
    "--averaged": "averaged",
    "--max-frames": "max_frames", "--engine": "engine", "--precision": "precision", "--device": "device",
    "--retime": "retime", "--trust-code": "trust_code"},
    defaults={"--max-frames": "all", "--json": "not written", "--figure": "not drawn",
              "--reference": "none: the Noise2Noise estimate from consecutive frames",
              "--channel": "every channel, each with its model"})


def scored_line(report: dict[str, Any]) -> str:
    """The line under evaluate's table: which engine and precision denoised (as n2n serve runs it, or as asked)."""
    how = ("the default, as n2n serve runs it" if report.get("served_default") else
           f"as asked: --engine {report.get('requested_engine')} --precision {report.get('requested_precision')}; "
           "n2n serve runs --engine auto --precision auto")
    averaged = f", frames averaged over {report['averaged']} readouts" if report.get("averaged", 1) > 1 else ""
    bright = (f"; {report['bright_frames']} of {report.get('frames')} frames by its bright network "
              f"({report.get('bright_precision')})" if report.get("bright_frames") else "")
    return f"scored: {report['engine']} {report['precision']} on {report['device']}{averaged}{bright} ({how})"


@EVALUATE
def evaluate(
    model: Annotated[list[str], typer.Option(
        "--model", metavar="[CHANNEL=]MODEL", help="Run folder made by `n2n train`, or a BioImage Model "
                                             "Zoo package (.zip). A model per channel of a multi-channel stack: "
                                             "repeat as --model NAME=FOLDER (a channel's OME name, else its index) "
                                             "or give a models.yaml; a channel without one is scored raw.")],
    data: Annotated[Path, typer.Option("--data", help="Noisy stack to denoise (T, H, W), or (T, C, H, W): each "
                                       "channel scored with its model.")],
    reference: Annotated[Path | None, typer.Option("--reference", help="Clean reference, (H, W) or (T, H, W); "
                                                   "without one: the Noise2Noise estimate of the gain over raw from "
                                                   "consecutive frames.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    figure: Annotated[Path | None, typer.Option("--figure", help="PNG: raw | Gaussian | denoised | reference.")]
    = None,
    max_frames: Annotated[int | None, typer.Option(help="Only the first N frames.")] = None,
    engine: Annotated[str | None, typer.Option(help="auto, openvino, onnxruntime or torch (auto: as n2n serve "
                                               "picks).")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (as n2n serve runs it: the fastest that passed its check, as recorded for this machine), fp32 "
             "(the model itself), bf16, fp16 or int8.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    retime: Annotated[bool | None, typer.Option("--retime", help="Precision auto: time the precisions again "
                                                "instead of taking the choice recorded for this machine.")] = None,
    trust_code: Annotated[bool | None, typer.Option("--trust-code", help="Run a TorchScript file this install did "
                                                    "not write (a downloaded model's): it is a program.")] = None,
    channel: Annotated[str | None, typer.Option(help="Score this channel of a multi-channel stack only (index or "
                                                "OME name; a reference with channels gives the same one).")] = None,
    averaged: AveragedOpt = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Score a model against a reference, beside Gaussian and frame-averaging baselines, denoised as n2n serve
    denoises it (the engine and precision it picks here, unless --engine/--precision say otherwise). A
    multi-channel stack is scored per channel, each with its own model (--model DAPI=runs/dapi --model
    GFP=runs/gfp)."""
    cfg = EVALUATE.load(config, dry_run, {"--max-frames": max_frames, "--engine": engine, "--precision": precision,
                                          "--device": device, "--retime": retime, "--averaged": averaged,
                                          "--trust-code": trust_code})
    from rich.progress import Progress

    from streamer.core.modelset import ModelSet
    from streamer.sources import read_stack
    from streamer.sources.tiff import stack_channels
    from trainer.evaluate import evaluate as run_eval

    with user_errors():
        models = ModelSet.parse(model)
        for path in models.models:
            if not Path(path).exists():
                raise FileNotFoundError(f"{path}: no such model folder or zoo package (make one with `n2n train`)")
        labels = stack_channels(data)
    if labels and channel is None:
        _evaluate_channels(models, labels, data, reference, cfg, json_path, figure)
        return
    with user_errors():
        raw = read_stack(data, allow_2d=False, channel=channel)
        with_channels = reference is not None and channel is not None and bool(stack_channels(reference))
        ref = read_stack(reference, channel=channel if with_channels else None) if reference is not None else None
    label = None if channel is None else labels[_index(channel, labels)] if labels else str(channel)
    model_path = _model_of(models, labels, label, data)
    if ref is None or reference is None:
        _evaluate_without_reference(model_path, data, raw, cfg, json_path, figure, label)
        return
    scale = _check_reference(raw, ref, reference, data)
    if scale is not None:
        console.print(f"[bold yellow]warning:[/bold yellow] --reference {reference}: {scale}", highlight=False,
                      soft_wrap=True)
    with user_errors(), Progress(console=console, transient=True) as progress:
        task = progress.add_task("denoising", total=len(raw))
        report, den = run_eval(model_path, raw, ref, cfg, lambda done, _: progress.update(task, completed=done))
    report = {"model": str(model_path), "data": str(data), "reference": str(reference),
              **({} if label is None else {"channel": label}), **report}
    table = Table(title=f"{data.name}{'' if label is None else f' (channel {label})'} vs {reference.name} "
                        f"({report['frames']} frames)")
    for col in ("method", "PSNR (dB)", "SSIM"):
        table.add_column(col)
    rows = [("raw", "raw"), ("n2n-live model", "denoised"), (f"Gaussian σ={report['gaussian_sigma']}", "gaussian"),
            ("average of 2", "average2"), ("average of 4", "average4")]
    for label, key in rows:
        if report.get(f"psnr_{key}") is not None:
            table.add_row(label, f"{report[f'psnr_{key}']:.2f}", f"{report[f'ssim_{key}']:.4f}")
    out.print(table)
    out.print(scored_line(report), highlight=False, markup=False)
    _write_evaluation(report, json_path, figure, raw[0], den[0], ref[0] if ref.ndim == 3 else ref)


def _check_reference(raw: Any, ref: Any, reference: Path | None, data: Path, label: str | None = None) -> str | None:
    """A reference of the data's frame shape (one frame, or one per frame), else a one-line error; the warning
    :func:`trainer.evaluate.reference_warning` gives on it (another bit depth or contrast), or None."""
    from trainer.evaluate import reference_warning

    t, h, w = raw.shape
    if ref.shape != (h, w) and ref.shape != (t, h, w):
        where = "" if label is None else f" in channel {label}"
        raise UserError(f"--reference {reference}: expected frames of {h}x{w}{where}, one or {t} of them (the shape "
                        f"of --data {data}), got shape {ref.shape}")
    return reference_warning(raw, ref)


def _index(channel: str, labels: list[str]) -> int:
    """The index of ``channel`` (a name or an index) among a stack's channels (read by then: it is one of them)."""
    from streamer.core.streams import channel_index

    return channel_index(channel, labels, len(labels))


def _model_of(models: Any, labels: list[str], label: str | None, data: Path) -> Path:
    """The model that scores one stack (``label``: the channel taken, None: a single-channel stack): a single
    model, or the set's for that channel (by name or index)."""
    if models.single:
        return Path(models.default)
    from streamer.datasets.channels import route_channels

    with user_errors():
        routes, _ = route_channels(models, labels or [label or "0"], str(data))
    chosen = routes[labels.index(label) if labels and label is not None else 0]
    if chosen is None:
        what = f"channel {label!r}" if label is not None else "its one channel ('0')"
        raise UserError(f"--model: expected a model for {what} of --data {data}, got a model set without one "
                        f"({models.describe()})")
    return Path(chosen)


def _evaluate_channels(models: Any, labels: list[str], data: Path, reference: Path | None, cfg: Any,
                       json_path: Path | None, figure: Path | None) -> None:
    """``n2n evaluate`` on a multi-channel stack: each channel scored with its own model of the set (a single model
    serves them all, said once), one without a model scored raw (its raw PSNR/SSIM, said once); a table row and a
    ``--json`` entry (``channels``) per channel. A reference must hold the same channels. The figure shows the first
    channel that has a model."""
    from rich.progress import Progress, TaskID

    from n2n.command import warn
    from streamer.datasets.channels import route_channels
    from streamer.sources import read_stack
    from streamer.sources.tiff import stack_channels
    from trainer.evaluate import evaluate as run_eval
    from trainer.evaluate import evaluate_without_reference, score_raw

    listed = ", ".join(repr(n) for n in labels)
    with user_errors():
        routes, unused = route_channels(models, labels, str(data))
        ref_labels = stack_channels(reference) if reference is not None else []
    if not any(routes):
        raise UserError(f"--model: expected a model for at least one channel of --data {data} ({listed}), got a "
                        f"model set with none of them ({models.describe()})")
    if reference is not None and len(ref_labels) != len(labels):
        raise UserError(f"--reference {reference}: expected the {len(labels)} channels of --data {data} (a "
                        f"reference per channel), got {len(ref_labels) or 'one'}")
    for key in unused:
        warn(f"the model set names channel {key!r}, which --data {data} does not hold (its channels: {listed}): "
             f"{models.channels[key]} is not used")
    if models.single:
        console.print(f"{models.default} serves each of the {len(labels)} channels of {data.name} ({listed}), one "
                      "model for all; give each channel its own with --model NAME=FOLDER", highlight=False,
                      soft_wrap=True)
    for c in (c for c, m in enumerate(routes) if m is None):
        warn(f"channel {labels[c]} of {data} has no model in the set ({models.describe()}): scored raw, not denoised")
    channels: dict[str, dict[str, Any]] = {}
    shown: tuple[Any, Any, Any, dict[str, Any]] | None = None  # the figure's: raw, denoised, reference, scores
    with Progress(console=console, transient=True) as progress:
        for c, label in enumerate(labels):
            with user_errors():
                raw = read_stack(data, allow_2d=False, channel=c)
                ref = read_stack(reference, channel=c) if reference is not None else None
            if ref is not None:
                scale = _check_reference(raw, ref, reference, data, label)
                if scale is not None:
                    warn(f"--reference {reference}, channel {label}: {scale}")
            model = routes[c]
            with user_errors():
                if model is None:
                    report = score_raw(raw, ref, cfg)
                elif ref is None:
                    report, first = evaluate_without_reference(model, raw, cfg)
                else:
                    task = progress.add_task(f"denoising {label}", total=len(raw))

                    def advance(done: int, _: int, task: TaskID = task) -> None:
                        progress.update(task, completed=done)

                    report, den = run_eval(model, raw, ref, cfg, advance)
                    first = den[0]
            if model is not None and shown is None:
                shown = (raw[0], first, None if ref is None else ref[0] if ref.ndim == 3 else ref, report)
            channels[label] = {"model": None if model is None else str(Path(model)), **report}
    full = {"models": {label: r["model"] for label, r in channels.items()}, "data": str(data),
            "reference": None if reference is None else str(reference), "channels": channels}
    _channels_table(channels, data, reference)
    assert shown is not None  # at least one channel has a model
    _write_evaluation(full, json_path, figure, shown[0], shown[1], shown[2], scores=shown[3])


def _channels_table(channels: dict[str, dict[str, Any]], data: Path, reference: Path | None) -> None:
    """The per-channel table of :func:`_evaluate_channels` and the line under it (how they were scored)."""
    scored = next(r for r in channels.values() if r["model"] is not None)
    if reference is not None:
        table = Table(title=f"{data.name} vs {reference.name}, per channel ({scored['frames']} frames)")
        for col in ("channel", "model", "PSNR raw", "PSNR denoised", "gain (dB)", "SSIM raw", "SSIM denoised"):
            table.add_column(col)
        for label, r in channels.items():
            if r["model"] is None:
                table.add_row(label, "raw (no model)", f"{r['psnr_raw']:.2f}", "–", "–", f"{r['ssim_raw']:.4f}", "–")
            else:
                table.add_row(label, r["model"], f"{r['psnr_raw']:.2f}", f"{r['psnr_denoised']:.2f}",
                              f"{r['gain_db_over_raw']:+.2f}", f"{r['ssim_raw']:.4f}", f"{r['ssim_denoised']:.4f}")
        out.print(table)
        out.print(scored_line(scored), highlight=False, markup=False)
        return
    table = Table(title=f"{data.name}: estimated gain over raw per channel, no reference")
    for col in ("channel", "model", "pairs", "model gain (dB)", "Gaussian gain (dB)"):
        table.add_column(col)
    for label, r in channels.items():
        if r["model"] is None:
            table.add_row(label, "raw (no model)", "–", "–", "–")
        else:
            table.add_row(label, r["model"], str(r["pairs"]), f"{r['estimated_gain_db']:+.2f}",
                          f"{r['estimated_gain_db_gaussian']:+.2f}")
    out.print(table)
    out.print(f"scored: {scored['engine']} ({scored['precision']}), as served; the estimate assumes a still field and "
              "noise independent between frames", highlight=False, markup=False)


def _write_evaluation(report: dict[str, Any], json_path: Path | None, figure: Path | None, raw: Any, denoised: Any,
                      reference: Any, scores: dict[str, Any] | None = None) -> None:
    """``n2n evaluate``'s --json and --figure (raw | Gaussian | denoised [| reference] of the first frame, titled
    with ``scores``, by default the report's), then where each went."""
    from trainer.evaluate import save_figure

    with user_errors():
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=2) + "\n")
        if figure:
            figure.parent.mkdir(parents=True, exist_ok=True)
            from scipy import ndimage

            scores = report if scores is None else scores
            gaussian = ndimage.gaussian_filter(raw.astype("float32"), scores["gaussian_sigma"])
            save_figure(figure, raw, denoised, reference, scores, gaussian=gaussian)
    for what, path in (("figure", figure), ("report", json_path)):
        if path is not None:
            console.print(f"{what}: {path}", highlight=False)


def _evaluate_without_reference(model: Path, data: Path, raw: Any, cfg: Any, json_path: Path | None,
                                figure: Path | None, label: str | None = None) -> None:
    """``n2n evaluate`` without ``--reference``: the Noise2Noise estimate of the gain over raw, beside the best
    Gaussian filter's, from consecutive frames; the figure shows raw | Gaussian | denoised. ``label``: the channel
    scored (``--channel``)."""
    from trainer.evaluate import evaluate_without_reference

    with user_errors():
        report, first = evaluate_without_reference(model, raw, cfg)
    report = {"model": str(model), "data": str(data), **({} if label is None else {"channel": label}), **report}
    table = Table(title=f"{data.name}: estimated gain over raw, no reference ({report['pairs']} pairs of "
                        f"consecutive frames)")
    for col in ("method", "gain over raw (dB)"):
        table.add_column(col)
    table.add_row("raw", "0.00")
    table.add_row("n2n-live model", f"{report['estimated_gain_db']:+.2f}")
    table.add_row(f"Gaussian σ={report['gaussian_sigma']:g}", f"{report['estimated_gain_db_gaussian']:+.2f}")
    out.print(table)
    out.print(f"scored: {report['engine']} ({report['precision']}), as served; the estimate assumes a still field "
              "and noise independent between frames (good to a few tenths of a dB); a clean reference (--reference: "
              "the average of a still burst) gives PSNR and SSIM", highlight=False, markup=False)
    if report["estimated_gain_db"] <= report["estimated_gain_db_gaussian"]:
        from trainer.gain import NOT_BETTER_THAN_GAUSSIAN

        console.print(f"[bold yellow]warning: {NOT_BETTER_THAN_GAUSSIAN}[/bold yellow]", highlight=False,
                      soft_wrap=True)
    _write_evaluation(report, json_path, figure, raw[0], first, None)


AVERAGE = Command(defaults={"--first": "0", "--frames": "all from --first"})


@AVERAGE
def average(
    data: Annotated[Path, typer.Option("--data", help="A burst of a still field (T, H, W), TIFF/OME-TIFF.")],
    out_path: Annotated[Path, typer.Option("--out", help="The reference to write (float32 OME-TIFF).")],
    first: Annotated[int, typer.Option("--first", min=0, help="First frame to average.")] = 0,
    frames: Annotated[int | None, typer.Option("--frames", min=2, help="Frames to average.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
) -> None:
    """Make a clean reference from a still burst: the average of its frames (for n2n evaluate --reference)."""
    import numpy as np
    import tifffile

    from streamer.sources import read_stack

    if out_path.exists() and out_path.resolve() == data.resolve():
        raise UserError(f"--out {out_path}: is --data itself; expected another file (the burst is kept)")
    if out_path.exists() and not overwrite:
        raise UserError(f"--out {out_path}: exists; expected a new file, or --overwrite to replace it")

    with user_errors():
        raw = read_stack(data, min_frames=2, allow_2d=False)
    stop = raw.shape[0] if frames is None else first + frames
    if stop > raw.shape[0] or stop - first < 2:
        raise UserError(f"--first {first} --frames {frames}: expected at least 2 frames within the "
                        f"{raw.shape[0]} of --data {data}, got {max(0, min(stop, raw.shape[0]) - first)}")
    used = raw[first:stop]
    mean = used.mean(axis=0, dtype=np.float64).astype(np.float32)
    # motion breaks a reference: the first and last quarter's averages, lightly smoothed (structure over noise), must
    # differ only as much as the noise of q frames explains
    from scipy.ndimage import gaussian_filter

    q = max(1, len(used) // 4)
    early = gaussian_filter(used[:q].mean(axis=0, dtype=np.float64), 2)
    late = gaussian_filter(used[-q:].mean(axis=0, dtype=np.float64), 2)
    pair = gaussian_filter(used[0].astype(np.float64), 2) - gaussian_filter(used[1].astype(np.float64), 2)
    noise = float(np.std(pair) / np.sqrt(2))
    drift = float(np.sqrt(np.mean((early - late) ** 2)))
    expected = noise * np.sqrt(2 / q)  # two averages of q frames: what the noise alone leaves between them
    meta = {"average_of": len(used), "first": first, "frames": f"{first}..{stop - 1}", "source": str(data.resolve()),
            "noise_per_frame": round(noise, 6), "drift": round(drift, 6),
            "drift_explained_by_noise": round(expected, 6)}
    sidecar = out_path.with_name(out_path.name.split(".")[0] + ".json")
    with user_errors():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out_path, mean, ome=True, metadata={"axes": "YX"})
        sidecar.write_text(json.dumps({"n2n-average": meta}, indent=2) + "\n")
    console.print(f"averaged frames {first}..{stop - 1} ({len(used)}) of {data} into {out_path} (float32; which "
                  f"frames: {sidecar.name}): its noise is about 1/{np.sqrt(len(used)):.1f} of one frame's; score "
                  f"with n2n evaluate --reference {out_path}", highlight=False, soft_wrap=True)
    if noise > 0 and drift > 2.5 * expected:
        console.print(f"[bold yellow]warning:[/bold yellow] the field changed during the burst (the first and last "
                      f"quarters differ by {drift:.3g}, {drift / expected:.1f}x what the noise explains): an average "
                      "of a moving sample is blurred, and scores against it are too low", highlight=False,
                      soft_wrap=True)
