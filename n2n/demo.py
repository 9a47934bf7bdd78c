"""``n2n demo``: the whole product on the embedded default, with no microscope and no network.

1. start the simulated Micro-Manager session (an in-process MMCore running the simulated camera);
2. grab consecutive low-exposure frames (checked for saturation and motion);
3. train a Noise2Noise model on them, briefly, and export it (ONNX + TorchScript);
4. start the denoising server on the fastest engine here;
5. bridge the live stream through it while the dashboard shows rates, latency and drops: first
   in live mode for a while (latest frame wins, the rest dropped and counted), then a fixed
   number of frames in lossless mode (every frame denoised and saved, raw beside denoised);
6. print a summary (PSNR of raw and denoised frames against the simulator's noise-free truth,
   frame rates, latency percentiles, drops) and write a report folder: ``report.json``,
   ``frames.png`` (raw | denoised | truth), ``latency.png``, the recordings.

Ctrl-C at any stage stops everything cleanly (cores released, server closed, files valid).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

__all__ = ["DemoSettings", "QUICK", "FULL", "run_demo"]


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


#: the real-time model (configs/train_fast.yaml) trained for about a minute on 2 CPU cores
FULL = DemoSettings(size=256, exposure_ms=10.0, grab_frames=60, bridge_frames=100, live_seconds=20,
                    epochs=30, steps_per_epoch=100, batch_size=16, patch_size=64)
#: under a minute: the same model trained for seconds (it still beats the raw frames)
QUICK = DemoSettings(size=128, exposure_ms=10.0, grab_frames=24, bridge_frames=30, live_seconds=3,
                     epochs=8, steps_per_epoch=50, batch_size=8, patch_size=64)


def _train_config(s: DemoSettings) -> Any:
    from trainer.config import FAST_MODEL, TrainConfig

    return TrainConfig.model_validate({
        "version": 1, "mode": "n2n",
        "model": FAST_MODEL.model_dump(),
        "data": {"source": "files", "patch_size": s.patch_size, "val_pairs": 4},
        "optim": {"batch_size": s.batch_size, "epochs": s.epochs, "steps_per_epoch": s.steps_per_epoch,
                  "warmup_steps": min(50, s.epochs * s.steps_per_epoch // 4), "early_stopping_patience": s.epochs,
                  "seed": 0},
    })


def _latency_plot(path: Path, latencies: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    ax1.plot(np.arange(len(latencies)), latencies, ".-", lw=0.8, ms=3)
    ax1.set(xlabel="frame", ylabel="latency (ms): capture → denoised", title=title)
    lat = np.sort(np.asarray(latencies))
    ax2.plot(lat, np.arange(1, lat.size + 1) / lat.size)
    for q in (50, 95, 99):
        ax2.axvline(np.percentile(lat, q), ls=":", c="gray")
    ax2.set(xlabel="latency (ms)", ylabel="fraction of frames", title="latency CDF (p50, p95, p99 dotted)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out: Path, settings: DemoSettings = FULL, console: Console | None = None, dashboard: bool = True,
             stop: threading.Event | None = None, stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns the report (also written to ``out/report.json``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streamer.config import Endpoints, MicroManagerSourceConfig, ServeConfig
    from streamer.micromanager import open_source
    from streamer.micromanager.bridge import run_bridge
    from streamer.micromanager.grab import analyse_pairs, record
    from streamer.server import running_server
    from streamer.sources import SimulatedCamera, SimulatedCameraConfig, read_frame_metadata
    from trainer.evaluate import save_figure
    from trainer.metrics import psnr
    from trainer.run import run_training

    console = console or Console(stderr=True)
    stop = stop or threading.Event()
    out.mkdir(parents=True, exist_ok=True)
    s = settings
    say = stage or (lambda text: console.rule(f"[bold]{text}"))
    t_start = time.perf_counter()
    report: dict[str, Any] = {"settings": s.__dict__, "out": str(out)}

    def bar(label: str) -> Progress:
        return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        transient=True)

    # the simulated session at the demo's frame size (a .cfg file, as a user would write it)
    from streamer.micromanager import SIM_CFG

    cfg_file = out / "sim.cfg"
    cfg_file.write_text(SIM_CFG.replace("Width,512", f"Width,{s.size}").replace("Height,512", f"Height,{s.size}"))
    source_cfg = MicroManagerSourceConfig(config_file=str(cfg_file), exposure_ms=s.exposure_ms)

    # 1-2: grab
    say(f"1/5  Micro-Manager: grab {s.grab_frames} consecutive frames ({s.size}×{s.size}, {s.exposure_ms:g} ms)")
    grab_path = out / "grab.ome.tif"
    with open_source(source_cfg) as source, bar("grab") as progress:
        task = progress.add_task("grab", total=s.grab_frames)
        grabbed = record(source, s.grab_frames, grab_path, progress=lambda n, t: progress.update(task, completed=n))
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
    say(f"2/5  train Noise2Noise ({s.epochs} epochs × {s.steps_per_epoch} steps) and export")
    run_dir = out / "model"
    t0 = time.perf_counter()
    run_training(_train_config(s), run_dir, [grab_path], console=console)
    report["train"] = {"seconds": round(time.perf_counter() - t0, 1), "run": str(run_dir),
                       "artifacts": sorted(json.loads((run_dir / "model.json").read_text())["artifacts"])}
    if stop.is_set():
        raise KeyboardInterrupt

    # 4-5: serve + bridge with the dashboard: live (latest frame wins) for a while, then lossless
    local = Endpoints(**{k: "tcp://127.0.0.1:*" for k in ("input", "output", "request", "stats", "control")})
    bridge_path = out / "bridge.ome.tif"

    def bridged_run(mode: str, frames: int | None, seconds: float | None, path: Path | None,
                    ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        cfg = ServeConfig(mode=mode, endpoints=local, stats_interval_s=0.25)
        with running_server(run_dir, cfg, warmup_shape=(s.size, s.size)) as server:
            info = server.denoiser.info()
            result: dict[str, Any] = {}
            halt = threading.Event()
            with open_source(source_cfg) as source:
                def bridge() -> None:
                    try:
                        result["report"] = run_bridge(source, server.endpoints, frames, path, timeout_s=30,
                                                      stop=halt)
                    except BaseException as exc:  # re-raised in the main thread
                        result["error"] = exc

                worker = threading.Thread(target=bridge, name="n2n-demo-bridge", daemon=True)
                done = threading.Event()

                def watch() -> None:
                    worker.join()
                    done.set()

                timer = threading.Timer(seconds, halt.set) if seconds else None
                worker.start()
                threading.Thread(target=watch, daemon=True).start()
                if timer is not None:
                    timer.start()
                try:
                    if dashboard:
                        from streamer.dashboard import run_dashboard

                        # returns when the bridge is done, or early on Ctrl-C (which it catches)
                        run_dashboard(server.endpoints["stats"], console=console, stop=done)
                    else:
                        while not done.wait(0.2) and not stop.is_set():
                            pass
                    if not done.is_set():  # Ctrl-C in the dashboard, or a stop from the caller
                        stop.set()
                except KeyboardInterrupt:
                    stop.set()
                finally:
                    if stop.is_set():
                        halt.set()
                    if timer is not None:
                        timer.cancel()
                    worker.join(timeout=60)
            status = server.status()
        if "error" in result:
            raise result["error"]
        if stop.is_set():
            raise KeyboardInterrupt
        return result["report"], info, status

    say(f"3/5  serve and bridge the live stream for {s.live_seconds:g} s (live mode: latest frame wins)")
    live, info, live_status = bridged_run("live", None, s.live_seconds, None)
    report["live"] = {**live.to_dict(), "drop_fraction": round(live_status["drop_fraction"], 4),
                      "engine": info["engine"], "precision": info["precision"], "device": info["device"]}
    console.print(f"  {info['engine']} ({info['device']}, {info['precision']}): {live.frames_seen} frames seen at "
                  f"{live.fps_in:.1f} frames/s, {live.frames_denoised} denoised ({live.fps_out:.1f} frames/s), "
                  f"{live.frames_dropped} dropped; latency p50 {live.latency_ms_p50} ms, p99 {live.latency_ms_p99} ms",
                  highlight=False)
    say(f"4/5  bridge {s.bridge_frames} frames in lossless mode (every frame denoised and saved)")
    bridged, info, status = bridged_run("lossless", s.bridge_frames, None, bridge_path)

    # 6: score against the simulator's truth and report
    say("5/5  summary")
    saved = _read_pairs(bridge_path)
    meta = read_frame_metadata(bridge_path)
    truth_cam = SimulatedCamera(SimulatedCameraConfig(height=s.size, width=s.size, exposure_ms=s.exposure_ms))
    raws, dens = saved[:, 0].astype(np.float32), saved[:, 1].astype(np.float32)
    scores_raw, scores_den = [], []
    truth = truth_cam.expected(0)
    for i in range(len(saved)):
        index = meta[i].get("SimulatorFrame") if i < len(meta) else None
        truth = truth_cam.expected(int(index)) if isinstance(index, int) else truth
        rng = float(truth.max() - truth.min())
        scores_raw.append(psnr(raws[i], truth, rng))
        scores_den.append(psnr(dens[i], truth, rng))
    report["quality"] = {"psnr_raw_db": round(float(np.mean(scores_raw)), 2),
                         "psnr_denoised_db": round(float(np.mean(scores_den)), 2),
                         "frames_scored": len(saved), "reference": "simulator's noise-free truth"}
    report["stream"] = {**bridged.to_dict(), "engine": info["engine"], "precision": info["precision"],
                        "device": info["device"], "server_frames_in": status["frames_in"],
                        "server_frames_out": status["frames_out"], "server_drops": status["drops"],
                        "server_errors": status["errors"], "stages_ms": status["stages_ms"]}
    save_figure(out / "frames.png", raws[-1], dens[-1], truth,
                {"psnr_raw": scores_raw[-1], "psnr_denoised": scores_den[-1]})
    if bridged.latencies_ms:
        _latency_plot(out / "latency.png", bridged.latencies_ms,
                      f"{info['engine']} {info['precision']}, {s.size}², lossless")
    (out / "latencies_ms.json").write_text(json.dumps(bridged.latencies_ms))
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["files"] = sorted(p.name for p in out.iterdir())
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _read_pairs(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))
