"""Bare engine vs end to end through ``n2n serve`` (lossless mode), in one run.

    python -m bench.latency --model runs/NAME [--size 512] [--frames 200] [--engine auto]
                            [--transport tcp|ipc] [--json out.json]

1. bare: the engine alone, in this process, on one frame (median, p99, fps): a normalised batch, or
   with OpenVINO the camera frame itself (normalisation and conversion back are in its graph);
2. end to end: a real ``n2n serve --mode lossless`` process with the same engine and
   precision; this process pushes a frame, waits for its denoised frame on the output socket,
   and measures capture → received (median, p99), then pushes ``--frames`` frames as fast
   as backpressure allows and measures the sustained output rate;
3. bare again, to tell whether the machine was steady (more than 10% apart: "noisy").

Targets (from the streamer issue): end-to-end median within 10% of the bare median, and
sustained lossless frames/s within 10% of the bare engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamer.client import StreamClient
from streamer.config import ServeConfig
from streamer.server import load_denoiser
from streamer.sources import SimulatedCamera, SimulatedCameraConfig

__all__ = ["run", "make_frame", "bare_engine", "end_to_end", "main"]

ENDPOINT_NAMES = ("input", "output", "request", "stats", "control")


def make_frame(size: int, dtype: str, seed: int = 0) -> np.ndarray:
    """One realistic frame from the simulated camera, in the model's input dtype."""
    cam = SimulatedCamera(SimulatedCameraConfig(height=size, width=size, exposure_ms=10.0, seed=seed))
    frame = cam.read().pixels
    cam.close()
    if dtype == "uint8":
        lo, hi = np.percentile(frame, [0.1, 99.9])
        return np.clip((frame - lo) * (255.0 / max(hi - lo, 1)), 0, 255).astype(np.uint8)
    return frame.astype(dtype)


def _summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.median(a)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "n": int(a.size)}


def bare_engine(model: Path, cfg: ServeConfig, frame: np.ndarray, frames: int, warmup: int = 10) -> dict[str, Any]:
    """Time the engine alone (no sockets) on one frame: what the server's engine call does."""
    den = load_denoiser(model, cfg)
    try:
        plan = den.prepare(frame.shape, frame)  # type: ignore[arg-type]
        if not plan.tiled and frame.dtype.name in den.engine.frame_dtypes:
            # the engine's frame path: normalisation and conversion back are part of its graph
            raw = frame[None, None]
            out_dtype = "float32" if cfg.output_dtype == "float32" else frame.dtype.name

            def run_once() -> None:
                den.engine.infer_frames(raw, den.card.mean, den.card.std, out_dtype)
        else:
            batch = den.preprocess(frame)

            def run_once() -> None:
                den.engine.infer(batch)
        for _ in range(warmup):
            run_once()
        times = []
        t_start = time.perf_counter()
        for _ in range(frames):
            t0 = time.perf_counter()
            run_once()
            times.append((time.perf_counter() - t0) * 1e3)
        total = time.perf_counter() - t_start
        info = den.engine.info()
    finally:
        den.engine.close()
    stats = _summary(times)
    return {"engine": info["engine"], "precision": info["precision"], "device": info["device"],
            "ms": stats, "fps": frames / total, "precision_note": info["precision_note"], "samples_ms": times}


def _start_server(model: Path, engine: str, precision: str, threads: int | None, transport: str,
                  workdir: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    ready = workdir / "ready.json"
    cmd = [sys.executable, "-m", "n2n", "serve", "--model", str(model), "--mode", "lossless",
           "--engine", engine, "--precision", precision, "--ready-file", str(ready)]
    if threads:
        cmd += ["--threads", str(threads)]
    for name in ENDPOINT_NAMES:
        addr = f"ipc://{workdir}/{name}" if transport == "ipc" else "tcp://127.0.0.1:*"
        cmd += [f"--{name}", addr]
    log = workdir / "serve.log"  # a file, not a pipe: nobody has to keep reading it
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"n2n serve exited with {proc.returncode} before it was ready:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("n2n serve was not ready within 180 s")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())["endpoints"]


def end_to_end(endpoints: dict[str, str], frame: np.ndarray, frames: int, warmup: int = 10) -> dict[str, Any]:
    """Latency one frame at a time, then sustained throughput, through a running lossless server."""
    with StreamClient(endpoints, timeout=60) as client:
        client.wait_subscribed()
        for _ in range(warmup):
            client.send(frame)
            client.receive()
        lat: list[float] = []
        stages: dict[str, list[float]] = {"preprocess": [], "infer": [], "post_send": []}
        for _ in range(frames):
            seq = client.send(frame, ts_ns=time.time_ns())
            r = client.receive()
            now = time.time_ns()
            if r.seq != seq:
                raise RuntimeError(f"expected frame seq {seq} back, got {r.seq}")
            st = r.header["stages"]
            lat.append((now - r.header["ts_ns"]) * 1e-6)
            stages["infer"].append((st["inferred"] - st["preprocessed"]) * 1e-6)
            stages["preprocess"].append((st["preprocessed"] - st["received"]) * 1e-6)
            stages["post_send"].append((st["sent"] - st["inferred"]) * 1e-6)
        # sustained: a producer thread pushes as fast as backpressure lets it
        sent_err: list[BaseException] = []

        def produce() -> None:
            try:
                for _ in range(frames):
                    client_in.send(frame)
            except BaseException as exc:  # reported below
                sent_err.append(exc)

        with StreamClient(endpoints, timeout=60) as client_in:
            producer = threading.Thread(target=produce)
            t_first = t_last = 0.0
            producer.start()
            for i in range(frames):
                client.receive()
                t_last = time.perf_counter()
                if i == 0:
                    t_first = t_last
            producer.join()
        if sent_err:
            raise sent_err[0]
        status = client.status()
    fps = (frames - 1) / (t_last - t_first) if frames > 1 and t_last > t_first else float("nan")
    return {"ms": _summary(lat), "samples_ms": lat, "stages_ms": {k: _summary(v)["p50"] for k, v in stages.items()},
            "lossless_fps": fps, "server": {k: status[k] for k in ("engine", "precision", "device", "drops",
                                                                   "errors", "frames_out")}}


def run(model: Path, size: int = 512, frames: int = 200, engine: str = "auto", precision: str = "auto",
        threads: int | None = None, transport: str = "tcp", progress: Any = print) -> dict[str, Any]:
    """The whole benchmark; returns the report (see module docstring)."""
    from streamer.model import ModelCard

    card = ModelCard.load(model)
    frame = make_frame(size, card.input_dtype or "uint16")
    cfg = ServeConfig(engine=engine, precision=precision, num_threads=threads)  # type: ignore[arg-type]
    progress(f"bare engine ({engine}), {frames} frames of {size}x{size} {frame.dtype}")
    bare = bare_engine(model, cfg, frame, frames)
    progress(f"  {bare['engine']} {bare['precision']}: median {bare['ms']['p50']:.2f} ms, {bare['fps']:.1f} fps")
    with tempfile.TemporaryDirectory(prefix="n2n-bench-") as tmp:
        progress(f"n2n serve --mode lossless --engine {bare['engine']} over {transport}")
        proc, endpoints = _start_server(model, bare["engine"], bare["precision"], threads, transport, Path(tmp))
        try:
            e2e = end_to_end(endpoints, frame, frames)
        finally:
            try:
                with StreamClient(endpoints, timeout=10) as c:
                    c.control("shutdown")
            except (TimeoutError, RuntimeError):
                proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    progress(f"  end to end: median {e2e['ms']['p50']:.2f} ms, sustained {e2e['lossless_fps']:.1f} fps")
    progress("bare engine again (steadiness check)")
    bare2 = bare_engine(model, cfg, frame, max(20, frames // 4))
    spread = abs(bare2["ms"]["p50"] - bare["ms"]["p50"]) / bare["ms"]["p50"]
    e2e_ratio = e2e["ms"]["p50"] / bare["ms"]["p50"]
    fps_ratio = e2e["lossless_fps"] / bare["fps"]
    return {
        "model": str(model), "size": size, "dtype": str(frame.dtype), "frames": frames, "transport": transport,
        "engine": bare["engine"], "precision": bare["precision"], "device": bare["device"],
        "bare_ms_p50": bare["ms"]["p50"], "bare_ms_p99": bare["ms"]["p99"], "bare_fps": bare["fps"],
        "e2e_ms_p50": e2e["ms"]["p50"], "e2e_ms_p99": e2e["ms"]["p99"], "lossless_fps": e2e["lossless_fps"],
        "e2e_over_bare": e2e_ratio, "lossless_fps_over_bare": fps_ratio,
        "e2e_within_10pct": e2e_ratio <= 1.10, "throughput_within_10pct": fps_ratio >= 0.90,
        "stages_ms_p50": e2e["stages_ms"], "server": e2e["server"],
        "bare_repeat_ms_p50": bare2["ms"]["p50"], "machine_noisy": spread > 0.10,
        "bare": bare, "e2e": e2e, "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg()),
    }


def table(report: dict[str, Any]) -> str:
    """The report as a markdown table."""
    r = report
    rows = [
        ("engine", f"{r['engine']} ({r['device']}, {r['precision']})"),
        ("frame", f"{r['size']}x{r['size']} {r['dtype']}, over {r['transport']}"),
        ("bare engine median / p99", f"{r['bare_ms_p50']:.2f} / {r['bare_ms_p99']:.2f} ms"),
        ("end to end median / p99", f"{r['e2e_ms_p50']:.2f} / {r['e2e_ms_p99']:.2f} ms "
                                    f"({100 * (r['e2e_over_bare'] - 1):+.1f}%)"),
        ("bare engine frames/s", f"{r['bare_fps']:.1f}"),
        ("lossless sustained frames/s", f"{r['lossless_fps']:.1f} ({100 * (r['lossless_fps_over_bare'] - 1):+.1f}%)"),
        ("server stages p50 (pre / infer / post+send)",
         " / ".join(f"{r['stages_ms_p50'][k]:.2f}" for k in ("preprocess", "infer", "post_send")) + " ms"),
        ("machine", f"{r['cpu_count']} CPUs, load {r['loadavg'][0]:.2f}"
                    + (" (noisy: bare engine moved > 10% between runs)" if r["machine_noisy"] else " (steady)")),
    ]
    return "\n".join(["| measure | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model folder made by `n2n train`")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--engine", default="auto", choices=["auto", "openvino", "onnxruntime", "torch"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--transport", default="tcp", choices=["tcp", "ipc"])
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    a = p.parse_args(argv)
    if a.size < 16 or a.frames < 2:
        p.error(f"expected --size >= 16 and --frames >= 2, got {a.size} and {a.frames}")
    try:
        report = run(a.model, a.size, a.frames, a.engine, a.precision, a.threads, a.transport,
                     progress=lambda s: print(s, file=sys.stderr, flush=True))
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
