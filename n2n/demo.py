"""``n2n demo``: the whole product on the embedded default, with no microscope and no network.

1. start the simulated Micro-Manager session (an in-process MMCore running the simulated camera);
2. grab consecutive low-exposure frames (checked for saturation and motion);
3. train a Noise2Noise model on them, briefly, and export it (ONNX + TorchScript);
4. start the denoising server on the fastest engine here;
5. bridge the live stream through it while the dashboard shows rates, latency and drops: first
   in live mode for a while (latest frame wins, the rest dropped and counted), then a fixed
   number of frames in lossless mode (every frame denoised and saved, raw beside denoised);
6. print a summary (PSNR against the simulator's noise-free truth of the raw frames, of the best
   Gaussian filter, the classic baseline, and of the denoised frames; frame rates, latency percentiles,
   drops) and write a report folder: ``report.json``, ``frames.png`` (raw | Gaussian | denoised |
   truth), ``latency.png``, the recordings.

Ctrl-C at any stage stops everything cleanly (cores released, server closed, files valid); the demo
keeps no state to resume from, so running it again starts over.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from streamer.core.card import CARD_NAME
from streamer.core.config import Versioned

__all__ = ["FULL", "QUICK", "DemoConfig", "DemoSettings", "run_demo"]


class DemoConfig(Versioned):
    """``n2n demo``: the whole product on the simulated Micro-Manager session."""

    quick: bool = False
    """Under a minute: 128² frames and a small model trained for seconds."""
    out: str = "runs/demo"
    """Report folder."""
    dash: bool = True
    """Show the live dashboard while bridging."""
    view: bool = False
    """Open napari (n2n view) on the live stage: raw | denoised (needs the viewer extra and a display)."""
    mda: bool = False
    """The multi-dimensional session instead (n2n.demo_mda): bursts per (channel, position, z), a model per channel,
    an acquisition with every frame denoised, PSNR per stream."""


@dataclass(frozen=True)
class DemoSettings:
    size: int
    exposure_ms: float
    grab_frames: int
    bridge_frames: int
    live_seconds: float
    epochs: int
    steps_per_epoch: int
    batch_size: int
    patch_size: int
    train_seconds: float | None
    """Training's time budget (optim.max_minutes): the epochs that fit here, annealed to end there, so the demo
    holds its stated time on a busy machine and reports what it reached; ``None``: no budget, all the epochs (a
    result that does not depend on the machine's speed: the tests')."""


#: the real-time model (configs/train_fast.yaml) trained for at most 90 s (30 epochs take about that on 2 idle cores)
FULL = DemoSettings(size=256, exposure_ms=10.0, grab_frames=60, bridge_frames=100, live_seconds=20,
                    epochs=30, steps_per_epoch=100, batch_size=16, patch_size=64, train_seconds=90)
#: under a minute: the same model trained for at most 20 s (it still beats the raw frames and the Gaussian filter)
QUICK = DemoSettings(size=128, exposure_ms=10.0, grab_frames=24, bridge_frames=30, live_seconds=3,
                     epochs=16, steps_per_epoch=40, batch_size=16, patch_size=64, train_seconds=20)


def _train_config(s: DemoSettings) -> Any:
    from trainer.config import FAST_MODEL, ROBUST_DATA, TrainConfig

    return TrainConfig.model_validate({
        "version": 1, "mode": "n2n",
        "model": FAST_MODEL.model_dump(),
        "data": {"source": "files", "patch_size": s.patch_size, "val_pairs": 4, **ROBUST_DATA},
        "optim": {"batch_size": s.batch_size, "epochs": s.epochs, "steps_per_epoch": s.steps_per_epoch,
                  "warmup_steps": min(50, s.epochs * s.steps_per_epoch // 4), "early_stopping_patience": s.epochs,
                  "seed": 0, "max_minutes": None if s.train_seconds is None else s.train_seconds / 60,
                  "adapt_threads": True},
    })


BUSY_PCT = 25.0
"""Other processes using this much of all cores' time during the live stage: the summary says its figures were
measured on a busy machine."""


class _CpuLoad:
    """How much of the CPU other processes took over a stretch of the demo: the whole machine's busy time
    (``/proc/stat``) less this process's own (its threads: the server, the bridge, the dashboard), as a percentage
    of all cores' time; with the load average at the start. ``None`` where ``/proc/stat`` is missing."""

    def __init__(self) -> None:
        from streamer.dashboard import CpuMeter

        self.loadavg = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
        self._meter = CpuMeter()
        self._meter.percent()  # the baseline
        self._own, self._wall = self._own_seconds(), time.monotonic()

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def others_pct(self) -> float | None:
        busy = self._meter.percent()
        wall = time.monotonic() - self._wall
        if busy is None or wall <= 0:
            return None
        own = 100.0 * (self._own_seconds() - self._own) / (wall * (os.cpu_count() or 1))
        return round(max(0.0, busy - own), 1)


def _latency_plot(path: Path, latencies: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    ax1.plot(np.arange(len(latencies)), latencies, ".-", lw=0.8, ms=3)
    ax1.set(xlabel="frame", ylabel="latency (ms): capture → denoised", title=title)
    ax1.set_ylim(bottom=0)  # from zero: a latency axis starting at 4 ms makes 5 ms look like twice 4.5
    lat = np.sort(np.asarray(latencies))
    ax2.plot(lat, np.arange(1, lat.size + 1) / lat.size)
    for q in (50, 95, 99):
        ax2.axvline(np.percentile(lat, q), ls=":", c="gray")
    ax2.set(xlabel="latency (ms)", ylabel="fraction of frames", title="latency CDF (p50, p95, p99 dotted)")
    ax2.set_xlim(left=0)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train(s: DemoSettings, run_dir: Path, grab_path: Path, console: Console) -> Any:
    """Train and export; on Ctrl-C say what is true before the interrupt goes on."""
    import shlex

    from trainer.run import run_training

    try:
        return run_training(_train_config(s), run_dir, [grab_path], console=console)
    except KeyboardInterrupt:
        if (run_dir / "checkpoint.pt").is_file():
            again = shlex.join(["n2n", "train", "--resume", "--config", str(run_dir / "config.yaml"), "--data",
                                str(grab_path), "--out", str(run_dir)])
            console.print(f"[yellow]training interrupted; `n2n demo` does not resume (run it again to start over), "
                          f"but the epochs done are in {run_dir}: to finish that model, {again}[/yellow]",
                          highlight=False, soft_wrap=True)
        else:
            console.print("[yellow]training interrupted before its first epoch finished: nothing to resume; run "
                          "`n2n demo` again to start over[/yellow]", highlight=False, soft_wrap=True)
        raise


def run_demo(out: Path, settings: DemoSettings = FULL, console: Console | None = None, dashboard: bool = True,
             stop: threading.Event | None = None, stage: Callable[[str], None] | None = None,
             viewer: bool = False) -> dict[str, Any]:
    """Run the demo into ``out``; returns the report (also written to ``out/report.json``). ``viewer``: napari
    (``n2n view``) shows raw | denoised during the live stage."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.report import cpu_name
    from n2n.bridging import BridgeRun, bridge_live
    from streamer.endpoints import Endpoints
    from streamer.micromanager import SIM_CFG, open_source
    from streamer.micromanager.config import MicroManagerSourceConfig
    from streamer.micromanager.grab import analyse_pairs, record
    from streamer.server import ServeConfig
    from streamer.sources import SimulatedCamera, SimulatedCameraConfig, read_frame_metadata
    from trainer.metrics import psnr

    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    out.mkdir(parents=True, exist_ok=True)
    s = settings
    say = stage or (lambda text: console.rule(f"[bold]{text}"))
    t_start = time.perf_counter()
    report: dict[str, Any] = {"settings": s.__dict__, "out": str(out),
                              "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
                                          "loadavg_start": _CpuLoad().loadavg}}

    # the simulated session at the demo's frame size (a .cfg file, as a user would write it)
    cfg_file = out / "sim.cfg"
    cfg_file.write_text(SIM_CFG.replace("Width,512", f"Width,{s.size}").replace("Height,512", f"Height,{s.size}"))
    source_cfg = MicroManagerSourceConfig(config_file=str(cfg_file), exposure_ms=s.exposure_ms)

    # 1-2: grab
    say(f"1/5  Micro-Manager: grab {s.grab_frames} consecutive frames ({s.size}×{s.size}, {s.exposure_ms:g} ms)")
    grab_path = out / "grab.ome.tif"
    with open_source(source_cfg) as source, Progress(TextColumn("grab"), BarColumn(), MofNCompleteColumn(),
                                                     TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("grab", total=s.grab_frames)
        grabbed = record(source, s.grab_frames, grab_path, progress=lambda n, t: bar.update(task, completed=n))
        max_value = float(2**source.bit_depth - 1)
    checks = analyse_pairs(grab_path, max_value)
    report["grab"] = {"frames": grabbed.frames, "fps": grabbed.fps, "consecutive": grabbed.consecutive,
                      "missed": grabbed.missed, "warnings": checks["warnings"],
                      "pair_correlation_median": float(np.median(checks["correlation"]))}
    console.print(f"  {grabbed.frames} frames at {grabbed.fps:.1f} frames/s, image numbers consecutive: "
                  f"{grabbed.consecutive}; warnings: {checks['warnings'] or 'none'}", highlight=False)
    if stop.is_set():
        raise KeyboardInterrupt

    # 3: train + export
    say(f"2/5  train Noise2Noise for at most {s.train_seconds:g} s (up to {s.epochs} epochs × {s.steps_per_epoch} "
        "steps) and export")
    run_dir = out / "model"
    t0 = time.perf_counter()
    card = _train(s, run_dir, grab_path, console)
    report["train"] = {"seconds": round(time.perf_counter() - t0, 1), "run": str(run_dir),
                       "training_seconds": round(card.training["seconds"], 1), "budget_seconds": s.train_seconds,
                       "epochs": card.training["epochs"], "epochs_planned": s.epochs,
                       "stopped": card.training["stopped"],
                       "artifacts": sorted(json.loads((run_dir / CARD_NAME).read_text())["artifacts"])}
    if stop.is_set():
        raise KeyboardInterrupt

    # 4-5: serve + bridge with the dashboard: live (latest frame wins) for a while, then lossless
    def bridged(mode: str, frames: int | None, seconds: float | None, path: Path | None,
                started: Callable[..., None] | None = None) -> BridgeRun:
        serve = ServeConfig(mode=mode, endpoints=Endpoints.local(), stats_interval_s=0.25)
        run = bridge_live(source_cfg, model=run_dir, serve=serve, frames=frames, seconds=seconds, out=path,
                          timeout_s=30, view="dashboard" if dashboard else "none", console=console, stop=stop,
                          started=started)
        if run.stopped:
            raise KeyboardInterrupt
        return run

    say(f"3/5  serve and bridge the live stream for {s.live_seconds:g} s (live mode: latest frame wins)")
    load = _CpuLoad()
    with _Viewer(out / "viewer.json", console) if viewer else contextlib.nullcontext() as view:
        live_run = bridged("live", None, s.live_seconds, None, view.open if view is not None else None)
    others = load.others_pct()
    report["machine"]["live_stage"] = {"loadavg_start": load.loadavg, "others_cpu_pct": others,
                                       "busy": others is not None and others >= BUSY_PCT,
                                       "note": "other processes' share of all cores' time during the live stage"
                                               + (" (napari's, n2n view, among them)" if viewer else "")}
    if view is not None:
        report["viewer"] = view.summary
    live, info, live_status = live_run.report, live_run.server or {}, live_run.status
    assert live_status is not None  # (a server started here)
    report["live"] = {**live.to_dict(), "drop_fraction": round(live_status["drop_fraction"], 4),
                      "engine": info["engine"], "precision": info["precision"], "device": info["device"]}
    console.print(f"  {info['engine']} ({info['device']}, {info['precision']}): {live.frames_seen} frames seen at "
                  f"{live.fps_in:.1f} frames/s, {live.frames_denoised} denoised ({live.fps_out:.1f} frames/s), "
                  f"{live.frames_dropped} dropped; latency p50 {live.latency_ms_p50} ms, p99 {live.latency_ms_p99} ms",
                  highlight=False)
    if report["machine"]["live_stage"]["busy"]:
        console.print(f"  [yellow]the CPU was busy: other processes used {others:.0f}% of all cores meanwhile (load "
                      f"average {load.loadavg[0] if load.loadavg else float('nan'):.1f} at the stage's start), so "
                      f"these rates are this machine's under that load, not its best[/yellow]", highlight=False)
    say(f"4/5  bridge {s.bridge_frames} frames in lossless mode (every frame denoised and saved)")
    bridge_path = out / "bridge.ome.tif"
    lossless = bridged("lossless", s.bridge_frames, None, bridge_path)
    bridged_report, info, status = lossless.report, lossless.server or {}, lossless.status
    assert status is not None  # (a server started here)

    # 6: score against the simulator's truth (beside the best Gaussian filter) and report
    say("5/5  summary")
    saved = _read_pairs(bridge_path)
    meta = read_frame_metadata(bridge_path)
    truth_cam = SimulatedCamera(SimulatedCameraConfig(height=s.size, width=s.size, exposure_ms=s.exposure_ms))
    raws, dens = saved[:, 0].astype(np.float32), saved[:, 1].astype(np.float32)
    truths: list[np.ndarray] = []
    truth = truth_cam.expected(0)
    for i in range(len(saved)):
        index = meta[i].get("SimulatorFrame") if i < len(meta) else None
        truth = truth_cam.expected(int(index)) if isinstance(index, int) else truth
        truths.append(truth)
    ranges = [float(t.max() - t.min()) for t in truths]
    scores_raw = [psnr(r, t, rng) for r, t, rng in zip(raws, truths, ranges)]
    scores_den = [psnr(d, t, rng) for d, t, rng in zip(dens, truths, ranges)]
    from trainer.config import EvaluateConfig
    from trainer.evaluate import best_gaussian, save_figure

    sigma, smoothed, _ = best_gaussian(raws, truths, ranges, EvaluateConfig().gaussian_sigmas)
    scores_gauss = [psnr(g, t, rng) for g, t, rng in zip(smoothed, truths, ranges)]
    report["quality"] = {"psnr_raw_db": round(float(np.mean(scores_raw)), 2),
                         "psnr_gaussian_db": round(float(np.mean(scores_gauss)), 2), "gaussian_sigma": sigma,
                         "psnr_denoised_db": round(float(np.mean(scores_den)), 2),
                         "frames_scored": len(saved), "reference": "simulator's noise-free truth",
                         "gaussian": "sigma scoring best on the first 5 frames, among n2n evaluate's"}
    report["stream"] = {**bridged_report.to_dict(), "engine": info["engine"], "precision": info["precision"],
                        "device": info["device"], "server_frames_in": status["frames_in"],
                        "server_frames_out": status["frames_out"], "server_drops": status["drops"],
                        "server_errors": status["errors"], "stages_ms": status["stages_ms"]}
    save_figure(out / "frames.png", raws[-1], dens[-1], truths[-1],
                {"psnr_raw": scores_raw[-1], "psnr_gaussian": scores_gauss[-1], "gaussian_sigma": sigma,
                 "psnr_denoised": scores_den[-1]}, gaussian=smoothed[-1], reference_title="truth (noise-free)")
    if bridged_report.latencies_ms:
        _latency_plot(out / "latency.png", bridged_report.latencies_ms,
                      f"{info['engine']} {info['precision']}, {s.size}², lossless")
    (out / "latencies_ms.json").write_text(json.dumps(bridged_report.latencies_ms))
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["files"] = sorted({p.name for p in out.iterdir()} | {"report.json"})
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


class _Viewer:
    """``n2n view`` in a process of its own on the server of the live stage; closed (SIGTERM) when the stage ends,
    its summary read back from ``summary_path``."""

    def __init__(self, summary_path: Path, console: Console) -> None:
        self.summary_path = summary_path
        self.console = console
        self.proc: subprocess.Popen[bytes] | None = None
        self.summary: dict[str, Any] | None = None

    def open(self, _info: Any, endpoints: dict[str, str], _source: Any) -> None:
        self.summary_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "n2n", "view", "--view-address", endpoints["view"],
                                      "--stats-address", endpoints["stats"], "--json", str(self.summary_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.console.print("  napari opened on the live stream (n2n view): raw | denoised", highlight=False)

    def __enter__(self) -> _Viewer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        from streamer.core.processes import stop_process

        stop_process(self.proc, timeout=20)  # n2n view closes its window on SIGTERM and writes its summary
        if self.summary_path.is_file():
            self.summary = json.loads(self.summary_path.read_text())
            self.console.print(f"  viewer: {self.summary['shown']} frames shown at {self.summary['display_fps']:.1f} "
                               f"frames/s, {self.summary['skipped']} skipped", highlight=False)


def _read_pairs(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))
