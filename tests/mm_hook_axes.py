"""Run by tests/test_hook_raw_axes.py in a fresh process: a pycromanager ``Acquisition`` (Python backend) of time
points × 2 channels × 2 z planes on the in-process core (tests/mm_ndtiff.py's microscope), through the denoising
hook's ``with_raw`` with ``keep_raw`` a folder, against a server in this process. Prints one JSON line of results,
then tears everything down and reports the threads still alive.

    python tests/mm_hook_axes.py MODEL_DIR OUT_DIR [T]
"""

from __future__ import annotations

import gc
import json
import sys
import threading
from pathlib import Path

import numpy as np
from mm_ndtiff import CHANNELS, HEIGHT, WIDTH, events, prepare


def main(model: str, out: Path, n_time: int) -> dict:
    from ndstorage import Dataset
    from pycromanager import Acquisition
    from pycromanager.acquisition.acq_eng_py.internal.engine import Engine

    from streamer.endpoints import Endpoints
    from streamer.micromanager import close_core, denoise_hook, load_core, use_as_pycromanager_core
    from streamer.server import ServeConfig, running_server

    cfg = ServeConfig(endpoints=Endpoints.local(), num_threads=1, precision="fp32")
    core = load_core("sim")
    result: dict = {}
    try:
        prepare(core)
        use_as_pycromanager_core(core)
        with running_server(model, cfg, warmup_shape=(HEIGHT, WIDTH)) as server:
            with denoise_hook(server.endpoints, keep_raw=out / "raw") as hook:
                with Acquisition(directory=str(out), name="hooked", image_process_fn=hook.with_raw,
                                 show_display=False) as acq:
                    acq.acquire(events(n_time))
            dataset = acq.get_dataset()  # read afresh from disk: in this process pycromanager's own Dataset object can
            folder = dataset.path  # give an image written right after one it read stale (its reader's read-ahead)
            dataset.close()
            dataset, raw = Dataset(str(folder)), Dataset(str(out / "raw"))
            try:
                coords = sorted(dataset.get_image_coordinates_list(), key=lambda c: sorted(c.items()))
                raw_coords = sorted(raw.get_image_coordinates_list(), key=lambda c: sorted(c.items()))
                pairs = [(np.asarray(dataset.read_image(**c)), np.asarray(raw.read_image(**c))) for c in coords]
                stored_meta = [dataset.read_metadata(**c) for c in coords]
                raw_meta = [raw.read_metadata(**c) for c in coords]
                result = {
                    "hook": hook.counts(), "stored": len(coords), "raw_saved": len(raw_coords),
                    "same_axes": coords == raw_coords,
                    "axes": sorted({k for c in coords for k in c}),
                    "channels": sorted({str(c["channel"]) for c in coords}),
                    "raw_dtypes": sorted({str(r.dtype) for _, r in pairs}),
                    "identical": all(np.array_equal(d, server.denoiser(r)) for d, r in pairs),
                    "differs_from_raw": all(not np.array_equal(d, r) for d, r in pairs),
                    "raw_axes_in_metadata": all(m["Axes"] == c for m, c in zip(raw_meta, coords)),
                    "denoised_flagged": sum(m.get("n2n-denoised") is True for m in stored_meta),
                    "not_emitted_flagged": sum(m.get("n2n-raw-emitted") is False for m in stored_meta),
                }
            finally:
                raw.close()
                dataset.close()
    finally:
        close_core(core)  # also stops pycromanager's acquisition engine, which was driving this core
        del core
        gc.collect()
    result["expected_channels"] = sorted(CHANNELS)
    result["engine_released"] = Engine.get_instance() is None
    result["threads_left"] = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
    return result


if __name__ == "__main__":
    outcome = main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 3)
    gc.collect()  # the core, held in pycromanager's reference cycles, released before the interpreter's teardown
    print(json.dumps(outcome))
