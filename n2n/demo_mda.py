"""``n2n demo --mda``: the whole multi-channel session on the simulated microscope, with no microscope and no network
(issue 32), from the parts the commands use:

1. grab a Noise2Noise burst at each (channel, position, z) of a small built-in sequence (2 channels, DAPI and GFP;
   2 stage positions; 1 or 2 z-planes), as ``n2n grab --mda`` does (:func:`n2n.grabbing.grab_mda`);
2. train a model per channel on those files, as ``n2n train --per-channel`` does (the demo's real-time model, held
   to seconds with ``--quick``), and write the model set ``models/models.yaml``;
3. run the acquisition with every frame denoised, as ``n2n acquire`` does (:func:`n2n.acquiring.acquire_mda`:
   pymmcore-plus's MDA runner with the denoising engine), writing ``raw.ome.zarr`` and ``denoised.ome.zarr``;
4. score every (channel, position, z) stream against the simulator's noise-free truth (raw, the best Gaussian
   filter, denoised; :mod:`bench.mda`'s helpers) and write ``report.json``.

Ctrl-C at any stage stops it cleanly: the grab's and the acquisition's files stay valid, the core is stopped and
released (:func:`n2n.inprocess.inprocess_core`), the server closed; the demo keeps no state to resume from.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from n2n.demo import FULL, QUICK, DemoSettings

__all__ = ["MDA_FULL", "MDA_QUICK", "MdaDemoSettings", "demo_mda_command", "print_summary", "run_demo_mda"]


@dataclass(frozen=True)
class MdaDemoSettings:
    size: int
    """Square frame side (px)."""
    z_um: tuple[float, ...]
    """The z-planes (µm) at each position."""
    burst_frames: int
    """Consecutive frames grabbed at each (channel, position, z) for training."""
    times: int
    """Time points of the acquisition (interval 0)."""
    train: DemoSettings
    """Each channel's training (``n2n demo``'s model and schedule; ``train_seconds`` per channel)."""
    int8: bool = True
    """Try the INT8 export after each channel's training (as ``n2n train`` does)."""


#: 2 channels × 2 positions × 2 planes at 256², each channel's model trained for at most 60 s
MDA_FULL = MdaDemoSettings(size=256, z_um=(0.0, 2.0), burst_frames=24, times=10,
                           train=dataclasses.replace(FULL, train_seconds=60))
#: 2 channels × 2 positions × 1 plane at 128², each channel's model trained for at most 15 s on small patches (more
#: steps in the time: what a model trained for seconds needs most), without the INT8 export
MDA_QUICK = MdaDemoSettings(size=128, z_um=(0.0,), burst_frames=16, times=4, int8=False,
                            train=dataclasses.replace(QUICK, epochs=20, batch_size=8, patch_size=32,
                                                      train_seconds=15))


def _sequence(s: MdaDemoSettings) -> Any:
    """The built-in sequence: bench.mda's channels (each at its exposure) and positions, ``s.z_um``, ``s.times``
    time points at interval 0; time outermost, z innermost (configs/micromanager/mda.yaml's order)."""
    import useq

    from bench.mda import CHANNELS, EXPOSURE_MS, POSITIONS

    return useq.MDASequence(axis_order="tpgcz", channels=[{"config": c, "exposure": EXPOSURE_MS[c]} for c in CHANNELS],
                            stage_positions=[{"x": x, "y": y, "z": 0.0} for x, y in POSITIONS],
                            z_plan={"absolute": list(s.z_um)}, time_plan={"interval": 0, "loops": s.times})


def _train_per_channel(s: MdaDemoSettings, files: list[str], models_dir: Path, console: Console) -> dict[str, Any]:
    """A run per channel in ``models_dir/CHANNEL`` (the channel read from the grab's multi-channel files, as
    ``n2n train --per-channel`` does), then ``models_dir/models.yaml``. Returns what each run reached."""
    from n2n.demo import _train_config
    from streamer.core.filenames import safe_name
    from streamer.core.modelset import ModelSet
    from streamer.sources.tiff import stack_channels
    from trainer.run import TrainingInterrupted, run_training

    labels = stack_channels(files[0])
    cfg = _train_config(s.train)
    cfg = cfg.model_copy(update={"quantize": cfg.quantize.model_copy(update={"int8": s.int8})})
    done: dict[str, str] = {}
    reached: dict[str, Any] = {}
    for label in labels:
        folder = safe_name(label)
        one = cfg.model_copy(update={"data": cfg.data.model_copy(update={"channel": label})})
        console.print(f"  channel {label} → {models_dir / folder}", highlight=False)
        try:
            card = run_training(one, models_dir / folder, [Path(f) for f in files], console=console)
        except TrainingInterrupted:
            raise KeyboardInterrupt from None
        done[label] = folder
        reached[label] = {"epochs": card.training["epochs"], "epochs_planned": s.train.epochs,
                          "training_seconds": round(card.training["seconds"], 1),
                          "budget_seconds": s.train.train_seconds, "run": str(models_dir / folder)}
    path = ModelSet(done).save(models_dir / "models.yaml")
    return {"model_set": str(path), "channels": reached}


def run_demo_mda(out: Path, settings: MdaDemoSettings = MDA_FULL, console: Console | None = None,
                 dashboard: bool = True, stop: threading.Event | None = None,
                 stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the multi-dimensional demo into ``out``; returns the report (also ``out/report.json``). KeyboardInterrupt
    when stopped, after the files and the core are closed: Ctrl-C at any stage; SIGTERM only during the grab and the
    acquisition (their signal handlers; elsewhere it ends the process as by default); ``stop`` during those two
    stages and between stages."""
    from bench.mda import (
        CHANNELS,
        EXPOSURE_MS,
        POSITIONS,
        channel_ranges,
        gaussian_baseline,
        mean_psnr,
        stream_frames,
    )
    from n2n.acquiring import acquire_mda
    from n2n.grabbing import grab_mda
    from streamer.endpoints import Endpoints
    from streamer.micromanager import SIM_CFG
    from streamer.micromanager.config import AcquireConfig, GrabConfig, MicroManagerSourceConfig
    from streamer.micromanager.grab_mda import analyse_bursts
    from streamer.micromanager.microscope import microscope_of
    from streamer.server import ServeConfig

    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    say = stage or (lambda text: console.rule(f"[bold]{text}"))
    out.mkdir(parents=True, exist_ok=True)
    s = settings
    t_start = time.perf_counter()
    sequence = _sequence(s)
    (out / "sequence.yaml").write_text(sequence.yaml())  # `n2n grab --mda` and `n2n acquire --mda` read it
    cfg_file = out / "sim.cfg"  # the simulated microscope at the demo's frame size
    cfg_file.write_text(SIM_CFG.replace("Width,512", f"Width,{s.size}").replace("Height,512", f"Height,{s.size}"))
    source = MicroManagerSourceConfig(config_file=str(cfg_file))
    shape = f"{len(CHANNELS)} channels × {len(POSITIONS)} positions × {len(s.z_um)} z"
    report: dict[str, Any] = {"settings": dataclasses.asdict(s), "out": str(out), "channels": list(CHANNELS),
                              "positions": [list(p) for p in POSITIONS], "z_um": list(s.z_um),
                              "exposure_ms": {c: EXPOSURE_MS[c] for c in CHANNELS}}

    # 1: a burst per (channel, position, z)
    say(f"1/4  grab {s.burst_frames} consecutive frames at each (channel, position, z): {shape}, {s.size}×{s.size}")
    shutil.rmtree(out / "grab", ignore_errors=True)  # the demo starts over (its own folder)
    grabbed = grab_mda(source, GrabConfig(frames=s.burst_frames, out=str(out / "grab" / "bursts.ome.tif")),
                       sequence, console=console, stop=stop)
    if grabbed.stopped:
        raise KeyboardInterrupt
    analyse_bursts(grabbed)
    report["grab"] = {"frames": grabbed.frames, "frames_planned": grabbed.frames_planned, "files": grabbed.files,
                      "streams": len(grabbed.streams),
                      "warnings": {b.stream: b.warnings for b in grabbed.streams.values() if b.warnings}}
    console.print(f"  {grabbed.frames} frames in {len(grabbed.streams)} bursts, {len(grabbed.files)} files "
                  f"(one per position and z, the channels inside); warnings: "
                  f"{sum(len(w) for w in report['grab']['warnings'].values()) or 'none'}", highlight=False)
    if grabbed.short:
        raise RuntimeError(f"expected {grabbed.frames_planned} frames from the grab, got {grabbed.frames}")
    if stop.is_set():
        raise KeyboardInterrupt

    # 2: a model per channel
    budget = f"at most {s.train.train_seconds:g} s" if s.train.train_seconds is not None else f"{s.train.epochs} epochs"
    say(f"2/4  train a model per channel, each for {budget}, and export")
    t0 = time.perf_counter()
    report["train"] = _train_per_channel(s, grabbed.files, out / "models", console)
    report["train"]["seconds"] = round(time.perf_counter() - t0, 1)
    if stop.is_set():
        raise KeyboardInterrupt

    # 3: the acquisition, every frame denoised by its channel's model
    say(f"3/4  acquire {shape} × {s.times} t with every frame denoised by its channel's model")
    truths: dict[tuple[int, str, int], np.ndarray] = {}

    def started(_info: Any, _endpoints: Any, core: Any) -> None:
        scope = microscope_of(core)
        truths.update({(p, c, z): scope.expected(c, POSITIONS[p], s.z_um[z], EXPOSURE_MS[c])
                       for p in range(len(POSITIONS)) for c in CHANNELS for z in range(len(s.z_um))})

    run = acquire_mda(source, AcquireConfig(models=[report["train"]["model_set"]], out=str(out / "acquisition"),
                                            overwrite=True),
                      sequence, serve=ServeConfig(mode="lossless", endpoints=Endpoints.local()),
                      view="dashboard" if dashboard else "progress", console=console, stop=stop, started=started)
    acq = run.report
    if acq.stopped:
        raise KeyboardInterrupt
    report["acquisition"] = {k: v for k, v in acq.to_dict().items() if k != "streams"}
    info = run.server or {}
    report["engine"] = {k: info.get(k) for k in ("engine", "precision", "device")}

    # 4: score each stream against the simulator's truth
    say("4/4  summary")
    raw, denoised = (stream_frames(Path(path), channels=CHANNELS, n_positions=len(POSITIONS), n_z=len(s.z_um))
                     for path in (acq.raw, acq.denoised))
    ranges = channel_ranges(truths)
    rows = []
    for p, c, z in sorted(raw, key=lambda k: (CHANNELS.index(k[1]), k[0], k[2])):
        truth, rng = truths[(p, c, z)], ranges[c]
        gaussian, sigma = gaussian_baseline(raw[(p, c, z)], truth, rng)
        rows.append({"channel": c, "position": p, "xy_um": list(POSITIONS[p]), "z_um": s.z_um[z],
                     "frames": int(raw[(p, c, z)].shape[0]), "psnr_raw": mean_psnr(raw[(p, c, z)], truth, rng),
                     "psnr_gaussian": gaussian, "gaussian_sigma": sigma,
                     "psnr_denoised": mean_psnr(denoised[(p, c, z)], truth, rng)})
    report["streams"] = rows
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["files"] = sorted({p.name for p in out.iterdir()} | {"report.json"})
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_summary(report: dict[str, Any], out: Console, console: Console, quick: bool) -> None:
    """A row per (channel, position, z) stream: PSNR of the raw, best-Gaussian and denoised frames against the
    simulator's truth; then where everything is."""
    acq, eng = report["acquisition"], report["engine"]
    table = Table(title=f"n2n demo --mda ({'quick' if quick else 'full'}) in {report['seconds']:.0f} s: PSNR (dB) "
                        "against the simulator's truth")
    for column in ("channel", "position", "z (µm)", "frames", "raw", "Gaussian (σ)", "denoised", "gain"):
        table.add_column(column, justify="left" if column == "channel" else "right")
    for r in report["streams"]:
        table.add_row(r["channel"], str(r["position"]), f"{r['z_um']:+g}", str(r["frames"]), f"{r['psnr_raw']:.2f}",
                      f"{r['psnr_gaussian']:.2f} ({r['gaussian_sigma']:g})", f"{r['psnr_denoised']:.2f}",
                      f"{r['psnr_denoised'] - r['psnr_raw']:+.2f}")
    out.print(table)
    trained = "; ".join(f"{c} {t['epochs']} of {t['epochs_planned']} epochs in {t['training_seconds']:.0f} s"
                        for c, t in report["train"]["channels"].items())
    out.print(f"grab: {report['grab']['frames']} frames in {len(report['grab']['files'])} files under "
              f"{report['out']}/grab\ntraining: {trained}; model set {report['train']['model_set']}\n"
              f"acquisition: {acq['frames']} frames, {acq['denoised_frames']} denoised ({eng['engine']}, "
              f"{eng['device']}, {eng['precision']}), {acq['passed_raw']} written raw: {acq['raw']}, "
              f"{acq['denoised']}\nreport: {report['out']}/report.json", highlight=False, soft_wrap=True)
    below = [f"{r['channel']} p{r['position']} z{r['z_um']:+g}" for r in report["streams"]
             if r["psnr_denoised"] <= r["psnr_gaussian"]]
    if below:
        console.print(f"[yellow]denoised scored at or below the Gaussian filter for {', '.join(below)}: each model "
                      "trained only seconds" + ("; `n2n demo --mda` (no --quick) trains longer" if quick else "")
                      + "[/yellow]", highlight=False, soft_wrap=True)


def demo_mda_command(cfg: Any) -> None:
    """``n2n demo --mda`` (``cfg``: the command's :class:`~n2n.demo.DemoConfig`): run, print the summary; exit 130
    when stopped. Its report folder is ``runs/demo_mda`` unless ``--out`` (or the file) says."""
    import typer

    from n2n.command import console, out
    from n2n.errors import UserError, user_errors

    out_dir = Path(cfg.out) if "out" in cfg.model_fields_set else Path("runs/demo_mda")
    if cfg.view:  # (a position at a time: napari-ome-zarr opens no folder of several)
        raise UserError("--view: expected it without --mda (napari on the single-field demo's live stage), got both; "
                        "open the acquisition after instead: napari --plugin napari-ome-zarr "
                        f"{out_dir}/acquisition/denoised.ome.zarr/0")
    try:
        with user_errors():
            report = run_demo_mda(out_dir, MDA_QUICK if cfg.quick else MDA_FULL, console=console,
                                  dashboard=cfg.dash)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: everything was shut down (the core released, the files closed); partial "
                      f"results in {out_dir}[/yellow]", highlight=False)
        raise typer.Exit(code=130) from None
    print_summary(report, out, console, cfg.quick)
