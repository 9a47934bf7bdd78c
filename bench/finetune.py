"""Online fine-tuning on the simulated camera: a model trained on one sample (seed 1, 20 ms exposure) serves
another sample at another exposure (seed 2, 5 ms) with ``finetune`` on, through real ``n2n serve`` processes
(lossless, a camera-paced stream). Reported: PSNR of the served frames against the simulator's truth over time,
at the start and the end, against models trained on the second sample from scratch with the same step budget as
the first model (``psnr_scratch``) and with as many training patches as the fine-tuned model saw in all
(``psnr_scratch_same_patches``); the time to get there; the serving frames/s with and without fine-tuning in the
same run; and the longest stall of the output during swaps against one frame's service time and against the
output's ordinary jitter away from swaps::

    python -m bench.finetune --json runs/bench_finetune.json        # --quick: a small check in a few minutes

``--swaps N`` ends the fine-tuning session once the output has switched model N times and served a whole end
window (what ``psnr_end`` averages) since, ``--minutes`` at the latest: a check that must see a swap waits for it,
however busy the machine, instead of hoping one comes within a fixed time.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import command
from bench.command import progress_to_stderr, write_json
from bench.latency import lossless_rate
from bench.processes import serve_command, spawn
from bench.report import machine
from streamer.client import StreamClient
from streamer.endpoints import Endpoints
from streamer.sources import SimulatedCameraConfig, simulate_stack

__all__ = ["main", "run_finetune_bench"]


_BATCH = 16
"""The batch size both benchmark models are trained with (the worker's is its own, ``finetune.batch_size``)."""


def _window(frames: int) -> int:
    """Frames that PSNR figures over time are averaged over (the start's and the end's among them)."""
    return max(20, frames // 20)


def _temporal_model(k: int) -> tuple[dict[str, Any], float]:
    """The model section and share of repeated windows of a K-frame model: the K-frame preset's network
    (configs/train_temporal.yaml, where this checkout has it) at K; K = 1: the real-time preset."""
    from trainer.config import FAST_MODEL, TrainConfig, load_config

    if k == 1:
        return FAST_MODEL.model_dump(), 0.0
    preset = Path(__file__).resolve().parent.parent / "configs" / "train_temporal.yaml"
    cfg = load_config(TrainConfig, preset if preset.exists() else None)
    model = {**(cfg.model if preset.exists() else FAST_MODEL).model_dump(), "input_frames": k}
    return model, cfg.data.repeated_windows


def _train(out: Path, raw: np.ndarray, epochs: int, steps: int, seed: int, k: int = 1) -> Path:
    """The real-time preset (K = 1) or the K-frame preset's network at K trained on ``raw`` for ``epochs`` x
    ``steps`` (no INT8: the swaps serve float)."""
    import tifffile

    from trainer.config import TrainConfig
    from trainer.run import run_training

    data = out.with_suffix(".tif")
    data.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(data, raw)
    model, repeated = _temporal_model(k)
    cfg = TrainConfig.model_validate({
        "version": 1, "mode": "n2n", "model": model,
        "data": {"source": "files", "patch_size": 64, "val_pairs": 4, "repeated_windows": repeated},
        "optim": {"batch_size": _BATCH, "epochs": epochs, "steps_per_epoch": steps, "early_stopping_patience": epochs,
                  "seed": seed, "warmup_steps": min(50, epochs * steps // 4)},
        "quantize": {"int8": False}})
    run_training(cfg, out, [data])
    return out


def _psnr(out: np.ndarray, truth: np.ndarray) -> float:
    from trainer.metrics import psnr

    return psnr(out.astype(np.float32), truth, float(truth.max() - truth.min()))


def _session(model: Path, workdir: Path, raw: np.ndarray, truth: np.ndarray, minutes: float, fps: float,
             finetune: dict[str, Any] | None, rate_frames: int, progress: Any,
             swaps: int | None = None) -> dict[str, Any]:
    """One server on ``model`` (with fine-tuning when given): its lossless rate, then a paced stream for
    ``minutes`` (with ``swaps``: until the output has switched model that many times and served an end window
    since, ``minutes`` at most): PSNR per frame against the truth, output gaps, swaps."""
    cmd = serve_command(model, Endpoints.local(), "lossless", "auto", "fp32", None)
    name = "serve-ft" if finetune else "serve-plain"
    if finetune is not None:
        settings = workdir / f"{name}.yaml"
        settings.write_text(json.dumps({"version": 1, "finetune": {**finetune, "enabled": True}}))  # YAML too
        cmd += ["--config", str(settings)]
    with spawn(cmd, workdir, name, 300.0) as server, \
            StreamClient(server.endpoints, timeout=60, send_hwm=10_000) as client, \
            StreamClient(server.endpoints, timeout=60) as control:
        client.wait_subscribed()
        lossless_rate(client, raw, 20)
        sent: list[int] = []
        got: list[tuple[int, float, str, float]] = []  # seq, arrival, model, PSNR
        stop = threading.Event()

        def produce() -> None:
            t0 = time.perf_counter()
            while not stop.is_set():
                time.sleep(max(0.0, t0 + len(sent) / fps - time.perf_counter()))
                i = len(sent)
                sent.append(client.send(raw[i % len(raw)], meta={"i": i % len(raw)}))

        thread = threading.Thread(target=produce)
        t_start = time.perf_counter()
        thread.start()
        end = t_start + minutes * 60
        last_report = t_start
        switched: list[int] = []  # where the output's model changed (indices into got)
        while not stop.is_set() or len(got) < len(sent):
            enough = swaps is not None and len(switched) >= swaps and len(got) - switched[-1] >= _window(len(got))
            if (time.perf_counter() >= end or enough) and not stop.is_set():
                stop.set()
                thread.join(timeout=60)  # (then every frame it sent is waited for)
                continue
            try:
                r = client.receive(timeout=1.0)
            except TimeoutError:
                continue
            i = int(r.header["meta"]["i"])
            if got and r.header["model"] != got[-1][2]:
                switched.append(len(got))
            got.append((int(r.seq or 0), time.perf_counter() - t_start, r.header["model"], _psnr(r.pixels, truth[i])))
            if time.perf_counter() - last_report > 15:
                last_report = time.perf_counter()
                recent = [p for _, _, _, p in got[-50:]]
                progress(f"  {got[-1][1]:.0f} s: PSNR {np.mean(recent):.2f} dB, model {r.header['model']}")
        # the serving rate now, flat out (with fine-tuning: while the worker trains, as it has been)
        rate = lossless_rate(client, raw, rate_frames)
        service_ms = control.status()["server_ms"]["p50"]
        status = control.status()
    t = np.array([a for _, a, _, _ in got])
    switches = switched
    gaps = np.diff(t) * 1000.0
    return {"rate_fps": round(rate, 1), "service_ms": service_ms, "frames": len(got),
            "session_minutes": round(float(t[-1]) / 60, 2) if len(t) else 0.0,  # as minutes_to_end
            "in_order_none_lost": [s for s, _, _, _ in got] == sent, "times_s": t.tolist(),
            "psnr": [p for _, _, _, p in got], "switch_times_s": [round(float(t[i]), 2) for i in switches],
            "gap_ms_at_switch": [round(float(gaps[i - 1]), 2) for i in switches],
            "gap_ms_p50": round(float(np.median(gaps)), 2),
            # the output's ordinary jitter, away from switches: what a stall at a switch is judged against
            "gap_ms_max_elsewhere": round(float(np.delete(gaps, [i - 1 for i in switches]).max(initial=0.0)), 2),
            "finetune": status.get("finetune"),
            "server_drops": status["drops"]}


def run_finetune_bench(size: int = 256, train_frames: int = 100, epochs: int = 30, steps: int = 100,
                       minutes: float = 5.0, fps: float = 20.0, quick: bool = False,
                       progress: Any = print, swaps: int | None = None, k: int = 1,
                       learning_rate: float | None = None) -> dict[str, Any]:
    cam1 = SimulatedCameraConfig(height=size, width=size, exposure_ms=20.0, seed=1)
    cam2 = SimulatedCameraConfig(height=size, width=size, exposure_ms=5.0, seed=2)
    raw1, _ = simulate_stack(cam1, train_frames)
    raw2, truth2 = simulate_stack(cam2, train_frames + 200)  # sample 2: frames to train on from scratch, then
    raw2, live_raw, live_truth = raw2[:train_frames], raw2[train_frames:], truth2[train_frames:]  # the stream
    finetune: dict[str, Any] = {"every": 2, "ring_pairs": 64, "val_every": 5, "min_pairs": 12, "steps": 50,
                                "threads": 1, "batch_size": 8}
    if learning_rate is not None:
        finetune["learning_rate"] = learning_rate
    report: dict[str, Any] = {"size": size, "train_frames": train_frames, "epochs": epochs, "steps_per_epoch": steps,
                              "minutes": minutes, "swaps_asked": swaps, "camera_fps": fps, "finetune": finetune,
                              "input_frames": k, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="n2n-bench-ft-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        progress(f"train on sample 1 (seed 1, 20 ms): {epochs} x {steps} steps")
        first = _train(work / "runs" / "sample1", raw1, epochs, steps, seed=0, k=k)
        report["train_seconds"] = round(time.perf_counter() - t0, 1)
        progress(f"train from scratch on sample 2 (seed 2, 5 ms), same budget ({report['train_seconds']:.0f} s)")
        scratch = _train(work / "runs" / "scratch", raw2, epochs, steps, seed=0, k=k)
        progress("serve sample 2 with the sample-1 model, fine-tuning on")
        tuned = _session(first, work, live_raw, live_truth, minutes, fps, {**finetune, "out": str(work / "live")},
                         300 if not quick else 60, progress, swaps)
        progress("the same without fine-tuning (serving rate), and the scratch model's PSNR")
        score = min(0.25, minutes)  # minutes of stream each model without fine-tuning is scored on
        plain = _session(first, work, live_raw, live_truth, score, fps, None, 300 if not quick else 60, progress)
        scratch_run = _session(scratch, work, live_raw, live_truth, score, fps, None, 20, progress)
        shutil.rmtree(work / "live", ignore_errors=True)
        # the fine-tuned model has seen the sample-1 budget's patches and the worker's: a scratch model given
        # as many patches of sample 2 (at the trainer's batch size) is the other fair comparison
        worker_steps = int((tuned["finetune"] or {}).get("steps") or 0)
        patches = epochs * steps * _BATCH + worker_steps * int(finetune["batch_size"])
        progress(f"train from scratch on sample 2 for as many patches as the fine-tuned model saw ({patches})")
        long_epochs = max(1, round(patches / _BATCH / steps))
        long_run = _session(_train(work / "runs" / "scratch_long", raw2, long_epochs, steps, seed=0, k=k), work,
                            live_raw, live_truth, score, fps, None, 20, progress)
    psnr, times = np.array(tuned["psnr"]), np.array(tuned["times_s"])
    window = _window(len(psnr))
    end = float(np.mean(psnr[-window:]))
    smooth = np.convolve(psnr, np.ones(window) / window, mode="valid")
    reached = next((i for i, v in enumerate(smooth) if v >= end - 0.1), len(smooth) - 1)
    report.update({
        "psnr_start": round(float(np.mean(psnr[:window])), 2),
        "psnr_end": round(end, 2),
        "psnr_scratch": round(float(np.mean(scratch_run["psnr"])), 2),
        "psnr_scratch_same_patches": round(float(np.mean(long_run["psnr"])), 2),
        "scratch_same_patches_steps": long_epochs * steps,
        # the fine-tuned model against a scratch model given as many training patches: the aim is within 0.3 dB
        "gap_db_to_scratch_same_patches": round(end - float(np.mean(long_run["psnr"])), 2),
        "psnr_plain_sample1_model": round(float(np.mean(plain["psnr"])), 2),
        "minutes_to_end": round(float(times[min(reached + window - 1, len(times) - 1)]) / 60, 2),
        "session_minutes": tuned["session_minutes"],
        "fps_ratio": round(tuned["rate_fps"] / plain["rate_fps"], 3),
        "serving_fps": {"with_finetune": tuned["rate_fps"], "without": plain["rate_fps"]},
        "service_ms": plain["service_ms"],
        "max_stall_ms": round(max(tuned["gap_ms_at_switch"], default=0.0) - 1000.0 / fps, 2)
        if tuned["gap_ms_at_switch"] else None,
        "stall_ms_elsewhere_max": round(tuned["gap_ms_max_elsewhere"] - 1000.0 / fps, 2),
        "gap_ms_at_switch": tuned["gap_ms_at_switch"], "switch_times_s": tuned["switch_times_s"],
        "in_order_none_lost": tuned["in_order_none_lost"], "server_drops": tuned["server_drops"],
        "worker": tuned["finetune"],
        "psnr_over_time": [[round(float(times[i]), 1), round(float(np.mean(psnr[i:i + window])), 2)]
                           for i in range(0, len(psnr) - window + 1, window)],
    })
    return report


def run_replay(model: Path, raw_path: Path, reference_path: Path, minutes: float, fps: float,
               progress: Any = print) -> dict[str, Any]:
    """A trained model fine-tuned live on a recorded stack replayed as a camera (in a loop), scored against its
    reference (one clean frame, or one per frame): PSNR before and after."""
    import tifffile

    raw = np.asarray(tifffile.imread(raw_path))
    ref = np.asarray(tifffile.imread(reference_path), np.float32)
    truth = np.broadcast_to(ref, raw.shape) if ref.ndim == 2 else ref
    finetune = {"every": 2, "ring_pairs": 64, "val_every": 5, "min_pairs": 12, "steps": 50, "threads": 1}
    with tempfile.TemporaryDirectory(prefix="n2n-bench-ft-") as tmp:
        work = Path(tmp)
        shutil.copytree(model, work / "runs" / model.name)
        tuned = _session(work / "runs" / model.name, work, raw, truth, minutes, fps,
                         {**finetune, "out": str(work / "live")}, 100, progress)
    psnr, times = np.array(tuned["psnr"]), np.array(tuned["times_s"])
    window = max(len(raw), len(psnr) // 20)  # whole passes over the stack
    return {"model": str(model), "data": str(raw_path), "minutes": minutes, "camera_fps": fps,
            "psnr_start": round(float(np.mean(psnr[:window])), 2), "psnr_end": round(float(np.mean(psnr[-window:])), 2),
            "swaps": len(tuned["switch_times_s"]), "switch_times_s": tuned["switch_times_s"],
            "in_order_none_lost": tuned["in_order_none_lost"], "worker": tuned["finetune"], "machine": machine(),
            "psnr_over_time": [[round(float(times[i]), 1), round(float(np.mean(psnr[i:i + window])), 2)]
                               for i in range(0, len(psnr) - window + 1, window)]}


def main(argv: list[str] | None = None) -> int:
    parser = command.parser("bench.finetune", __doc__, show_defaults=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30, help="training budget of both models (epochs)")
    parser.add_argument("--steps", type=int, default=100, help="... and steps per epoch")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the fine-tuning session (with --swaps: "
                        "at most)")
    parser.add_argument("--swaps", type=int, help="end the session once the output has switched model this many "
                        "times and served the end's window of frames since (default: run all --minutes)")
    parser.add_argument("--fps", type=float, default=20.0, help="camera rate of the stream")
    parser.add_argument("--quick", action="store_true", help="a small check: 128², a short budget and session")
    parser.add_argument("--replay", type=Path, help="instead: replay this recorded stack (e.g. FMD fov06_raw.tif) "
                        "to --model with fine-tuning on, scored against --reference")
    parser.add_argument("--reference", type=Path, help="the replayed stack's clean reference")
    parser.add_argument("--model", type=Path, help="the model to fine-tune on --replay")
    parser.add_argument("--k", type=int, default=1, help="frames per prediction: K > 1 trains both models with the "
                        "K-frame preset's network (configs/train_temporal.yaml) at K")
    parser.add_argument("--learning-rate", type=float, help="the worker's finetune.learning_rate (default: the "
                        "server's default)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k must be at least 1, not {args.k}")
    if args.replay is not None:
        if args.reference is None or args.model is None:
            parser.error("--replay needs --reference and --model")
        replay = run_replay(args.model, args.replay, args.reference, args.minutes, args.fps,
                            progress=progress_to_stderr)
        print(json.dumps({k: replay[k] for k in ("psnr_start", "psnr_end", "swaps")}, indent=2))
        if args.json:
            write_json(args.json, replay)
        return 0
    if args.quick:
        args.size, args.epochs, args.steps, args.minutes = 128, 4, 40, 1.0
    if args.size < 96:
        parser.error(f"--size must be at least 96 (the models train on 64-pixel patches and hold out rows of each "
                     f"frame to validate on), not {args.size}")
    if args.swaps is not None and args.swaps < 1:
        parser.error(f"--swaps must be at least 1, not {args.swaps}")
    report = run_finetune_bench(args.size, 100, args.epochs, args.steps, args.minutes, args.fps, args.quick,
                                progress=progress_to_stderr, swaps=args.swaps, k=args.k,
                                learning_rate=args.learning_rate)
    keys = ("psnr_start", "psnr_end", "psnr_scratch", "psnr_scratch_same_patches", "gap_db_to_scratch_same_patches",
            "minutes_to_end", "fps_ratio", "max_stall_ms", "service_ms")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
