"""Does a model swap stall the stream? A real ``n2n serve`` process (lossless) on a camera-paced stream; the model is
swapped (to a copy of itself in another folder: the same work as any swap of that architecture) several times
while frames flow. Reported: the server's service time per frame, the gaps between consecutive outputs in normal
running and around each swap (the longest is the stall), the time each swap took to prepare, and that no frame was
lost or reordered::

    python -m bench.swap --model runs/demo/model --size 512 --swaps 3 --json runs/bench_swap.json
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from bench import command
from bench.command import progress_to_stderr, require_model, write_json
from bench.processes import serve_command, spawn
from bench.report import machine
from streamer.client import StreamClient
from streamer.core.card import CARD_NAME
from streamer.endpoints import Endpoints
from streamer.sources import SimulatedCameraConfig, simulate_stack

__all__ = ["main", "run_swap_bench"]


def run_swap_bench(model: Path, size: int = 512, swaps: int = 3, fps: float | None = None, threads: int | None = None,
                   precision: str = "auto", progress: Any = print) -> dict[str, Any]:
    frames = simulate_stack(SimulatedCameraConfig(height=size, width=size, seed=9), 8)[0]
    with tempfile.TemporaryDirectory(prefix="n2n-bench-swap-") as tmp:
        root = Path(tmp) / "models"
        names = ["a", "b"]
        for name in names:  # the same weights in two folders: each swap loads, checks and compiles a model
            shutil.copytree(model, root / name)
            card = json.loads((root / name / CARD_NAME).read_text())
            (root / name / CARD_NAME).write_text(json.dumps({**card, "name": name}))  # whose frame it is
        cmd = serve_command(root / "a", Endpoints.local(), "lossless", "auto", precision, threads)
        with spawn([*cmd, "--models-root", str(root)], Path(tmp), "serve-swap", 180.0) as server, \
                StreamClient(server.endpoints, timeout=60, send_hwm=10_000) as client, \
                StreamClient(server.endpoints, timeout=120) as control:
            client.wait_subscribed()
            for i in range(20):  # warm up; and the service time of one frame at this size
                client.send(frames[i % 8])
                client.receive()
            service_ms = control.status()["server_ms"]["p50"]
            rate = fps or min(100.0, 0.7 * 1000.0 / max(service_ms, 1e-3))
            progress(f"{size}x{size}: service {service_ms:.2f} ms/frame; camera at {rate:.1f} frames/s; "
                     f"{swaps} swaps")
            sent: list[int] = []
            arrivals: list[tuple[int, float, str]] = []
            stop = threading.Event()

            def produce() -> None:
                t0 = time.perf_counter()
                while not stop.is_set():
                    due = t0 + len(sent) / rate
                    time.sleep(max(0.0, due - time.perf_counter()))
                    sent.append(client.send(frames[len(sent) % 8], ts_ns=time.time_ns()))

            def consume() -> None:
                # until the producer has ended and every frame it sent has come back (a frame is in ``sent``
                # only once its send returned: the producer may still be sending when ``stop`` is set)
                while producer.is_alive() or len(arrivals) < len(sent):
                    try:
                        r = client.receive(timeout=0.5)
                    except TimeoutError:
                        continue
                    arrivals.append((int(r.seq or 0), time.perf_counter(), r.header["model"]))

            producer = threading.Thread(target=produce)
            threads_ = [producer, threading.Thread(target=consume)]
            for t in threads_:
                t.start()
            windows: list[tuple[float, float, float]] = []
            time.sleep(2.0)
            for k in range(swaps):
                t_ask = time.perf_counter()
                reply = control.control("swap", model=names[(k + 1) % 2])
                windows.append((t_ask, time.perf_counter(), float(reply.get("prepared_s", 0.0))))
                time.sleep(2.0)
            stop.set()
            for t in threads_:
                t.join(timeout=120)
            status = control.status()
    seqs = [s for s, _, _ in arrivals]
    times = np.array([t for _, t, _ in arrivals])
    gaps = np.diff(times) * 1000.0
    during = np.zeros(len(gaps), bool)
    for t0, t1, _ in windows:  # a gap touching the time from the swap command to its reply
        during |= (times[1:] >= t0) & (times[:-1] <= t1 + 0.05)
    normal = gaps[~during]
    models = [m for _, _, m in arrivals]
    switches = [i for i in range(1, len(models)) if models[i] != models[i - 1]]  # first frame of each new model
    return {
        "size": size, "camera_fps": round(rate, 1), "service_ms": round(service_ms, 2), "frames": len(seqs),
        "in_order_none_lost": seqs == sent,
        "lost": len(set(sent) - set(seqs)), "out_of_order": sum(b < a for a, b in pairwise(seqs)),
        "swaps": status["swaps"], "swap_prepare_s": [round(w[2], 3) for w in windows],
        "swap_reply_s": [round(w[1] - w[0], 3) for w in windows],
        "frame_interval_ms": round(1000.0 / rate, 2),
        "gap_ms_normal": {"p50": round(float(np.median(normal)), 2), "max": round(float(normal.max()), 2)},
        "gap_ms_during_swaps": {"p50": round(float(np.median(gaps[during])), 2),
                                "max": round(float(gaps[during].max()), 2)} if during.any() else None,
        "gap_ms_at_switch": [round(float(gaps[i - 1]), 2) for i in switches],
        "max_stall_ms": round(float(gaps[during].max()) - 1000.0 / rate, 2) if during.any() else None,
        "server_drops": status["drops"], "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = command.parser("bench.swap", __doc__, show_defaults=True)
    parser.add_argument("--model", type=Path, default=Path("runs/demo/model"), help="model folder")
    parser.add_argument("--size", type=int, default=512, help="frame size (square)")
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--fps", type=float, default=None, help="camera rate (default: 70%% of the server's)")
    parser.add_argument("--threads", type=int, default=None, help="engine threads of the server")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    require_model(parser, args.model)
    report = run_swap_bench(args.model, args.size, args.swaps, args.fps, args.threads, args.precision,
                            progress=progress_to_stderr)
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
