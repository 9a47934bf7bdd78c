"""Run by tests/test_micromanager.py in a fresh process: a pycromanager ``Acquisition`` of N time
points on the in-process Micro-Manager core (simulated camera) with the n2n denoising hook,
against a server in this process. Prints one JSON line of results, then tears everything down
and reports the threads still alive; the test checks the exit code.

    python tests/mm_acquisition.py MODEL_DIR OUT_DIR [N]
"""

from __future__ import annotations

import gc
import json
import sys
import threading
from pathlib import Path

import numpy as np


def main(model: str, out: Path, n: int) -> dict:
    from pycromanager import Acquisition, multi_d_acquisition_events
    from pycromanager.acquisition.acq_eng_py.internal.engine import Engine

    from streamer.endpoints import Endpoints
    from streamer.micromanager import close_core, denoise_hook, load_core, use_as_pycromanager_core
    from streamer.server import ServeConfig, running_server
    from streamer.sources import read_frame_metadata, read_stack

    local = Endpoints.local()
    cfg = ServeConfig(endpoints=local, num_threads=1, precision="fp32")
    core = load_core("sim")
    result: dict = {}
    try:
        core.setProperty("Camera", "Width", 64)
        core.setProperty("Camera", "Height", 64)
        core.setExposure(2.0)
        use_as_pycromanager_core(core)
        with running_server(model, cfg, warmup_shape=(64, 64)) as server:
            hook = denoise_hook(server.endpoints, keep_raw=out / "raw.ome.tif")
            with Acquisition(directory=str(out), name="hooked", image_process_fn=hook) as acq:
                acq.acquire(multi_d_acquisition_events(num_time_points=n, time_interval_s=0))
            hook.close()
            dataset = acq.get_dataset()
            try:
                stored = [dataset.read_image(time=t) for t in range(n) if dataset.has_image(time=t)]
                meta = [dataset.read_metadata(time=t) for t in range(len(stored))]
            finally:
                dataset.close()
            raw = read_stack(out / "raw.ome.tif")
            expected = [server.denoiser(frame) for frame in raw]
            result = {
                "hook_frames": hook.frames, "hook_denoised": hook.denoised, "hook_errors": hook.errors,
                "stored": len(stored), "raw_saved": int(raw.shape[0]),
                "raw_metadata": len(read_frame_metadata(out / "raw.ome.tif")),
                "dtypes": sorted({str(s.dtype) for s in stored}),
                "identical": all(np.array_equal(s, e) for s, e in zip(stored, expected)),
                "differs_from_raw": all(not np.array_equal(s, r) for s, r in zip(stored, raw)),
                "flagged": sum(1 for m in meta if m.get("n2n-denoised") is True),
                "server_frames_out": server.stats.frames_out,
            }
    finally:
        close_core(core)  # also stops pycromanager's acquisition engine, which was driving this core
        del core
        gc.collect()
    result["engine_released"] = Engine.get_instance() is None
    result["threads_left"] = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
    return result


if __name__ == "__main__":
    outcome = main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 50)
    gc.collect()  # the core, held in pycromanager's reference cycles, released before the interpreter's teardown
    print(json.dumps(outcome))
