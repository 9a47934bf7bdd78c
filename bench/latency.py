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

Targets: end-to-end median within 10% of the bare median, and
sustained lossless frames/s within 10% of the bare engine's.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.command import Progress, parser, progress_to_stderr, run_command
from bench.processes import start_server
from streamer.client import StreamClient
from streamer.core.messages import Stages
from streamer.core.summary import summary
from streamer.server import ServeConfig, load_denoiser
from streamer.sources import SimulatedCamera, SimulatedCameraConfig

__all__ = ["BareEngine", "bare_engine", "end_to_end", "lossless_end_to_end", "lossless_rate", "main", "make_frame",
           "run", "table"]


def make_frame(size: int, dtype: str, seed: int = 0) -> np.ndarray:
    """One realistic frame from the simulated camera, in the model's input dtype."""
    cam = SimulatedCamera(SimulatedCameraConfig(height=size, width=size, exposure_ms=10.0, seed=seed))
    frame = cam.read().pixels
    cam.close()
    if dtype == "uint8":
        lo, hi = np.percentile(frame, [0.1, 99.9])
        return np.clip((frame - lo) * (255.0 / max(hi - lo, 1)), 0, 255).astype(np.uint8)
    return frame.astype(dtype)


class BareEngine:
    """The engine alone (no sockets), loaded and prepared for ``frame``: its precision is decided here,
    before anything is timed. :meth:`measure` times what the server's engine call does on that frame:
    a normalised batch, or with an engine that has a frame path (OpenVINO) the camera frame itself
    (normalisation and conversion back are part of its graph). Close it, or use it in a ``with`` block."""

    def __init__(self, model: Path, cfg: ServeConfig, frame: np.ndarray) -> None:
        self.denoiser = den = load_denoiser(model, cfg)
        try:
            plan = den.prepare(frame.shape, frame)  # type: ignore[arg-type]
        except BaseException:
            den.close()
            raise
        window = den.window(frame)  # a K-frame model's input: K frames (here the one repeated)
        if den._framed(plan, frame.dtype):
            raw = window[None, None] if window.ndim == 2 else window[None]
            out_dtype = "float32" if cfg.output_dtype == "float32" else frame.dtype.name
            self._call = lambda: den.engine.infer_frames(raw, den.card.mean, den.card.std, out_dtype, den._noise)
        else:
            batch = den.preprocess(window)
            self._call = lambda: den.engine.infer(batch)
        self.info: dict[str, Any] = den.engine.info()

    @property
    def precision(self) -> str:
        """The precision the engine runs at (``auto`` resolved)."""
        return self.info["precision"]

    def measure(self, frames: int, warmup: int = 10) -> dict[str, Any]:
        """``warmup`` calls, then ``frames`` timed ones: latency summary (ms), frames/s over the loop."""
        for _ in range(warmup):
            self._call()
        times = []
        t_start = time.perf_counter()
        for _ in range(frames):
            t0 = time.perf_counter()
            self._call()
            times.append((time.perf_counter() - t0) * 1e3)
        total = time.perf_counter() - t_start
        info = self.info
        return {"engine": info["engine"], "precision": info["precision"], "device": info["device"],
                "ms": summary(times), "fps": frames / total, "precision_note": info["precision_note"],
                "samples_ms": times}

    def close(self) -> None:
        self.denoiser.close()

    def __enter__(self) -> BareEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bare_engine(model: Path, cfg: ServeConfig, frame: np.ndarray, frames: int, warmup: int = 10) -> dict[str, Any]:
    """Time the engine alone (no sockets) on one frame: what the server's engine call does (see :class:`BareEngine`)."""
    with BareEngine(model, cfg, frame) as engine:
        return engine.measure(frames, warmup)


def end_to_end(endpoints: dict[str, str], frame: np.ndarray, frames: int, warmup: int = 10) -> dict[str, Any]:
    """Latency one frame at a time, then sustained throughput, through a running lossless server.

    Beside each figure, what the server's own stage stamps say of the same frames (``server_ms``: received to
    sent, per frame of the latency loop; ``server_fps`` and ``server_infer_ms_mean``: the sustained frames, from
    the server's send stamps), so that checks compare figures of one moment, never two moments of a machine whose
    load changes."""
    with StreamClient(endpoints, timeout=60) as client:
        client.wait_subscribed()
        for _ in range(warmup):
            client.send(frame)
            client.receive()
        lat: list[float] = []
        in_server: list[float] = []  # received → sent, in the server, per frame
        stages: dict[str, list[float]] = {"preprocess": [], "infer": [], "post_send": []}
        for _ in range(frames):
            seq = client.send(frame, ts_ns=time.time_ns())
            r = client.receive()
            now = time.time_ns()
            if r.seq != seq:
                raise RuntimeError(f"expected frame seq {seq} back, got {r.seq}")
            st, captured = r.header["stages"], r.header["ts_ns"]
            assert captured is not None  # (sent with its capture time above)
            lat.append((now - captured) * 1e-6)
            stages["infer"].append((st["inferred"] - st["preprocessed"]) * 1e-6)
            stages["preprocess"].append((st["preprocessed"] - st["received"]) * 1e-6)
            stages["post_send"].append((st["sent"] - st["inferred"]) * 1e-6)
            in_server.append((st["sent"] - st["received"]) * 1e-6)
        # sustained: a producer thread pushes as fast as backpressure lets it
        sent_err: list[BaseException] = []

        def produce() -> None:
            try:
                for _ in range(frames):
                    client_in.send(frame)
            except BaseException as exc:  # reported below
                sent_err.append(exc)

        sustained: list[Stages] = []  # the server's stage stamps of each sustained frame
        with StreamClient(endpoints, timeout=60) as client_in:
            producer = threading.Thread(target=produce)
            t_first = t_last = 0.0
            producer.start()
            for i in range(frames):
                sustained.append(client.receive().header["stages"])
                t_last = time.perf_counter()
                if i == 0:
                    t_first = t_last
            producer.join()
        if sent_err:
            raise sent_err[0]
        status = client.status()
    fps = (frames - 1) / (t_last - t_first) if frames > 1 and t_last > t_first else float("nan")
    # the same stretch by the server's clock: frames 2..n were sent within (sent_1, sent_n], each after its own call
    span_ns = sustained[-1]["sent"] - sustained[0]["sent"]
    infer_ms = [(st["inferred"] - st["preprocessed"]) * 1e-6 for st in sustained[1:]]
    return {"ms": summary(lat), "samples_ms": lat, "stages_ms": {k: summary(v)["p50"] for k, v in stages.items()},
            "server_ms": summary(in_server), "lossless_fps": fps,
            "server_fps": (frames - 1) * 1e9 / span_ns if span_ns > 0 else float("nan"),
            "server_infer_ms_mean": float(np.mean(infer_ms)) if infer_ms else float("nan"),
            "server": {k: status[k] for k in ("engine", "precision", "device", "drops", "errors", "frames_in",
                                              "frames_out")}}


def lossless_rate(client: StreamClient, frames: np.ndarray, n: int) -> float:
    """Frames/s through a lossless server: a thread pushes ``n`` of ``frames`` (in turn) as fast as backpressure
    lets it, this one takes every result."""
    t0 = time.perf_counter()
    sender = threading.Thread(target=lambda: [client.send(frames[i % len(frames)], timeout=60) for i in range(n)])
    sender.start()
    for _ in range(n):
        client.receive(timeout=60)
    sender.join()
    return n / (time.perf_counter() - t0)


def lossless_end_to_end(model: Path, engine: str, precision: str, frame: np.ndarray, frames: int, workdir: Path,
                        threads: int | None = None, transport: str = "tcp", warmup: int = 10,
                        log_dir: Path | None = None) -> dict[str, Any]:
    """:func:`end_to_end` through a ``n2n serve --mode lossless`` process started for it (stopped in any case)."""
    with start_server(model, workdir, mode="lossless", engine=engine, precision=precision, threads=threads,
                      transport=transport, log_dir=log_dir) as server:
        return end_to_end(server.endpoints, frame, frames, warmup)


def run(model: Path, size: int = 512, frames: int = 200, engine: str = "auto", precision: str = "auto",
        threads: int | None = None, transport: str = "tcp", progress: Progress = print) -> dict[str, Any]:
    """The whole benchmark; returns the report (see module docstring)."""
    from streamer.core.card import ModelCard

    card = ModelCard.load(model)
    frame = make_frame(size, card.input_dtype or "uint16")
    cfg = ServeConfig(engine=engine, precision=precision, num_threads=threads)  # type: ignore[arg-type]
    progress(f"bare engine ({engine}), {frames} frames of {size}x{size} {frame.dtype}")
    bare = bare_engine(model, cfg, frame, frames)
    progress(f"  {bare['engine']} {bare['precision']}: median {bare['ms']['p50']:.2f} ms, {bare['fps']:.1f} fps")
    with tempfile.TemporaryDirectory(prefix="n2n-bench-") as tmp:
        progress(f"n2n serve --mode lossless --engine {bare['engine']} over {transport}")
        e2e = lossless_end_to_end(model, bare["engine"], bare["precision"], frame, frames, Path(tmp), threads,
                                  transport)
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
    p = parser("bench.latency", __doc__)
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
    return run_command(lambda: run(a.model, a.size, a.frames, a.engine, a.precision, a.threads, a.transport,
                                   progress=progress_to_stderr), table, a.json)


if __name__ == "__main__":
    sys.exit(main())
