"""Micro-Manager frame rates: grab (to OME-TIFF) and bridge (through the server), per frame size.

    python -m bench.micromanager --model runs/quickstart [--sizes 512 2048] [--frames 100]
                                 [--exposure-ms 10] [--json out.json]

On the in-process core with the simulated camera at the given exposure (its frame period).
Per size it reports:

* camera: the simulated camera's own rate through MMCore (rendering each frame: on 2 CPU cores
  the simulator itself costs about 13 ms at 512² and 240 ms at 2048²), and with pre-rendered
  frames (``ReplayFrames``), which stands in for a real camera that costs the host nothing;
* grab: ``n2n grab``'s recording rate (pop from Micro-Manager → OME-TIFF on disk), replayed frames;
* bridge: ``n2n bridge`` in lossless mode (every frame denoised and saved, raw + denoised) and in
  live mode (latest frame wins): frames/s in and out, drops, latency (capture → denoised back).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.command import Progress, parser, progress_to_stderr, run_command
from streamer.endpoints import Endpoints
from streamer.micromanager import close_core, load_core
from streamer.micromanager.bridge import run_bridge
from streamer.micromanager.grab import record
from streamer.server import ServeConfig, running_server
from streamer.sources import MicroManagerSource

__all__ = ["camera_rate", "main", "measure", "run", "table"]


def _core(size: int, exposure_ms: float, replay: int) -> Any:
    core = load_core("sim")
    core.setProperty("Camera", "Width", size)
    core.setProperty("Camera", "Height", size)
    core.setProperty("Camera", "ReplayFrames", replay)
    core.setExposure(exposure_ms)
    return core


def camera_rate(size: int, exposure_ms: float, frames: int, replay: int) -> float:
    """Frames/s popped from MMCore's buffer (nothing else done with them)."""
    core = _core(size, exposure_ms, replay)
    try:
        source = MicroManagerSource(core)
        source.read()  # acquisition started, first frame (and any pre-rendering) done
        t0 = time.perf_counter()
        for _ in range(frames):
            source.read()
        rate = frames / (time.perf_counter() - t0)
        source.close()
        return rate
    finally:
        close_core(core)


def measure(model: str, size: int, frames: int, exposure_ms: float, tmp: Path,
            bridge_frames: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"size": size, "exposure_ms": exposure_ms, "camera_period_fps": 1000.0 / exposure_ms}
    replay = 16
    out["camera_rendered_fps"] = round(camera_rate(size, exposure_ms, min(frames, 20), 0), 2)
    out["camera_replayed_fps"] = round(camera_rate(size, exposure_ms, frames, replay), 2)

    core = _core(size, exposure_ms, replay)
    try:
        source = MicroManagerSource(core)
        source.read()
        report = record(source, frames, tmp / f"grab_{size}.ome.tif")
        source.close()
        out["grab_fps"] = report.fps
        out["grab_missed"] = report.missed
        (tmp / f"grab_{size}.ome.tif").unlink()

        local = Endpoints.local("tcp")
        n_bridge = bridge_frames or frames
        for mode in ("lossless", "live"):
            cfg = ServeConfig(mode=mode, endpoints=local)
            with running_server(model, cfg, warmup_shape=(size, size)) as server:
                source = MicroManagerSource(core)
                target = tmp / f"bridge_{size}_{mode}.ome.tif" if mode == "lossless" else None
                r = run_bridge(source, server.endpoints, n_bridge, target, timeout_s=60)
                source.close()
                out[f"bridge_{mode}"] = {
                    "engine": f"{r.engine}/{server.denoiser.engine.precision}", "frames": r.frames_seen,
                    "denoised": r.frames_denoised, "dropped": r.frames_dropped,
                    "missed_in_micromanager": r.missed_in_micromanager, "fps_in": r.fps_in, "fps_out": r.fps_out,
                    "latency_ms_p50": r.latency_ms_p50, "latency_ms_p99": r.latency_ms_p99}
                if target is not None:
                    target.unlink(missing_ok=True)
    finally:
        close_core(core)
    return out


def table(report: dict[str, Any]) -> str:
    """One markdown row per frame size."""
    lines = ["| size | camera (rendered / replayed) fps | grab fps | bridge lossless: in / out fps, p50 latency | "
             "bridge live: in / out fps, dropped, p50 latency |", "|---|---|---|---|---|"]
    for r in report["results"]:
        ll, lv = r["bridge_lossless"], r["bridge_live"]
        lines.append(
            f"| {r['size']}² | {r['camera_rendered_fps']:.1f} / {r['camera_replayed_fps']:.1f} "
            f"(period {r['camera_period_fps']:.0f}) | {r['grab_fps']:.1f} | {ll['fps_in']:.1f} / {ll['fps_out']:.2f}, "
            f"{ll['latency_ms_p50']} ms | {lv['fps_in']:.1f} / {lv['fps_out']:.2f}, {lv['dropped']} of {lv['frames']}, "
            f"{lv['latency_ms_p50']} ms |")
    return "\n".join(lines)


def run(model: str, sizes: list[int], frames: int, exposure_ms: float, bridge_frames: int | None = None,
        progress: Progress = progress_to_stderr) -> dict[str, Any]:
    """:func:`measure` at every size; the report ``{"cpu_count", "results": [one per size]}``."""
    results = []
    with tempfile.TemporaryDirectory(prefix="n2n-bench-mm-") as tmp:
        for size in sizes:
            progress(f"measuring {size}x{size} ...")
            results.append(measure(model, size, frames, exposure_ms, Path(tmp), bridge_frames))
    return {"cpu_count": os.cpu_count(), "results": results}


def main(argv: list[str] | None = None) -> int:
    p = parser("bench.micromanager", __doc__)
    p.add_argument("--model", required=True, help="model folder (n2n train output)")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--frames", type=int, default=100, help="frames per grab measurement")
    p.add_argument("--bridge-frames", type=int, default=None, help="frames per bridge run (default: --frames)")
    p.add_argument("--exposure-ms", type=float, default=10.0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    return run_command(lambda: run(a.model, a.sizes, a.frames, a.exposure_ms, a.bridge_frames), table, a.json)


if __name__ == "__main__":
    raise SystemExit(main())
