"""What watching costs, against a real ``n2n serve`` process on this machine: the server's lossless frames/s with
no viewer and with a stalled viewer (subscribed, never reading), in alternating trials of one run; then napari
(``n2n view`` in its own process) on a camera-paced stream: the frame rate it sustains, frames skipped, latency
from capture to drawn, and whether the server still keeps the camera's pace beside it. Needs the ``viewer``
extra and a display (``xvfb-run -a`` gives one)::

    xvfb-run -a python -m bench.viewer --model runs/demo/model --size 512 2048 --json runs/bench_viewer.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import command
from bench.command import progress_to_stderr, require_model, write_json
from bench.latency import lossless_rate
from bench.processes import Process, start_server
from bench.report import machine
from streamer.client import StreamClient
from streamer.core.processes import stop_process
from streamer.sources import SimulatedCameraConfig, simulate_stack
from streamer.viewer import ViewFeed

__all__ = ["main", "run_viewer_bench"]


def _napari(endpoints: dict[str, str], frames: int, out: Path, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "n2n", "view", "--view-address", endpoints["view"],
                             "--stats-address", endpoints["stats"], "--snapshot", str(out / "view.png"),
                             "--frames", str(frames), "--timeout", f"{timeout:g}", "--json", str(out / "view.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_viewers(client: StreamClient, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while client.status()["viewers"] != n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not count {n} viewers within {timeout:g} s")
        time.sleep(0.02)


def _paced(client: StreamClient, frames: np.ndarray, fps: float, until: Any) -> dict[str, float]:
    """A camera at ``fps`` into the lossless server until ``until()`` says stop; what came out and how fast."""
    sent = received = 0
    period = 1.0 / fps
    t0 = time.perf_counter()
    while not until():
        due = t0 + sent * period
        while time.perf_counter() < due:
            while received < sent and client.receive(timeout=60):
                received += 1
            time.sleep(min(0.002, max(0.0, due - time.perf_counter())))
        client.send(frames[sent % len(frames)], timeout=60)
        sent += 1
    while received < sent:
        client.receive(timeout=60)
        received += 1
    seconds = time.perf_counter() - t0
    return {"sent": sent, "seconds": round(seconds, 2), "fps_out": round(received / seconds, 1)}


def measure_size(server: Process, size: int, n: int, trials: int, shown: int, workdir: Path) -> dict[str, Any]:
    """One frame size: the server's lossless rate alone and with a stalled viewer (alternating trials); then
    napari on a camera at 80% of that rate (at most 100 frames/s): what it draws, skips, and its latency."""
    frames = simulate_stack(SimulatedCameraConfig(height=size, width=size, seed=5), 8)[0]
    rates: dict[str, list[float]] = {"alone": [], "stalled": []}
    with StreamClient(server.endpoints, timeout=60, send_hwm=n) as client:
        client.wait_subscribed()
        lossless_rate(client, frames, min(n, 20))  # warm up (the engine's first frames of this shape)
        for _ in range(trials):
            rates["alone"].append(lossless_rate(client, frames, n))
            with ViewFeed(server.endpoints["view"]):  # subscribed, never reads
                _wait_viewers(client, 1)
                rates["stalled"].append(lossless_rate(client, frames, n))
            _wait_viewers(client, 0)
        med = {k: float(np.median(v)) for k, v in rates.items()}
        camera_fps = round(min(100.0, 0.8 * med["alone"]), 1)
        out = workdir / f"napari-{size}"
        out.mkdir()
        proc = _napari(server.endpoints, shown, out, timeout=300)
        try:
            _wait_viewers(client, 1, timeout=120)
            paced = _paced(client, frames, camera_fps, lambda: proc.poll() is not None)
        finally:
            stop_process(proc, 30)
        if proc.returncode != 0:
            tail = proc.stderr.read()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"n2n view failed ({proc.returncode}): {tail}")
        view = json.loads((out / "view.json").read_text())
        status = client.status()
    return {
        "size": size, "frames_per_trial": n, "trials": trials,
        "server_fps": {k: round(v, 1) for k, v in med.items()},
        "server_fps_trials": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "stalled_over_alone": round(med["stalled"] / med["alone"], 3),
        "camera_fps": camera_fps, "server_fps_with_napari": paced["fps_out"], "napari_seconds": paced["seconds"],
        "napari_display_fps": view["display_fps"], "napari_shown": view["shown"], "napari_skipped": view["skipped"],
        "napari_latency_ms": {k: round(v, 1) for k, v in view["latency_ms"].items() if k != "n" and v is not None},
        "server_drops": status["drops"], "view_frames": status["view_frames"],
    }


def run_viewer_bench(model: Path, sizes: list[int], trials: int = 3, shown: int = 40, threads: int | None = None,
                     precision: str = "auto", progress: Any = print) -> dict[str, Any]:
    report: dict[str, Any] = {"model": str(model), "precision": precision, "machine": machine(), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="n2n-bench-viewer-") as tmp:
        workdir = Path(tmp)
        with start_server(model, workdir, mode="lossless", precision=precision, threads=threads) as server:
            report["engine"] = {k: server.ready.get(k) for k in ("engine", "precision", "device")}
            for size in sizes:
                n = max(20, min(300, int(300 * (512 / size) ** 2)))
                progress(f"{size}x{size}: {trials} trials of {n} frames, alone / stalled viewer / napari")
                row = measure_size(server, size, n, trials, shown if size <= 1024 else max(10, shown // 4), workdir)
                progress(json.dumps(row))
                report["sizes"].append(row)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = command.parser("bench.viewer", __doc__, show_defaults=True)
    parser.add_argument("--model", type=Path, default=Path("runs/demo/model"), help="model folder")
    parser.add_argument("--size", type=int, nargs="+", default=[512, 2048], help="frame sizes (square)")
    parser.add_argument("--trials", type=int, default=3, help="alternating trials per size")
    parser.add_argument("--shown", type=int, default=40, help="frames napari shows per trial (a quarter above 1024²)")
    parser.add_argument("--threads", type=int, default=None, help="engine threads of the server")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    require_model(parser, args.model)
    report = run_viewer_bench(args.model, args.size, args.trials, args.shown, args.threads, args.precision,
                              progress=progress_to_stderr)
    print(json.dumps([{k: r[k] for k in ("size", "server_fps", "stalled_over_alone", "camera_fps",
                                          "server_fps_with_napari", "napari_display_fps", "napari_latency_ms")}
                      for r in report["sizes"]], indent=2))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
