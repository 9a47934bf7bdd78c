"""Run by tests/test_session_changes.py in a fresh process: pycromanager ``Acquisition``s (Python backend) of time
points × FITC, TRITC on the in-process core (tests/mm_ndtiff.py's microscope, 40 × 24), one session through one
denoising hook with ``keep_raw`` a folder, against a server of a model per channel in this process. The session
changes as it goes: after t = 0, 1 the user renames the TRITC preset TRITC-561 (core.renameConfig) and acquires
t = 2, 3 with it; before t = 3 the camera's ROI is set (core.setROI, mid-acquisition). Prints one JSON line of
results, then tears everything down and reports the threads still alive.

    python tests/mm_session_changes.py FITC_MODEL TRITC_MODEL OUT_DIR
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from mm_ndtiff import CHANNELS, prepare

ROI = (8, 4, 24, 16)  # x, y, width, height
RENAMED = "TRITC-561"
K = 3


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main(fitc: str, tritc: str, out: Path) -> dict[str, Any]:
    from ndstorage import Dataset
    from pycromanager import Acquisition
    from pycromanager.acquisition.acq_eng_py.internal.engine import Engine

    from streamer.client import StreamClient
    from streamer.core.modelset import ModelSet
    from streamer.endpoints import Endpoints
    from streamer.micromanager import close_core, denoise_hook, load_core, use_as_pycromanager_core
    from streamer.server import ServeConfig, load_denoiser, running_server

    said = Lines()
    logger = logging.getLogger("n2n")
    logger.setLevel(logging.INFO)
    logger.addHandler(said)
    cfg = ServeConfig(endpoints=Endpoints.local(), num_threads=1, precision="fp32", motion_threshold=None)
    core = load_core("sim")
    hold = [core]  # (what the hook below reaches: let go with the core at the end)
    changed: set[str] = set()

    def new_roi(event: Any) -> Any:
        """Before an event's hardware: the camera's ROI set from t = 3 on (mid-acquisition)."""
        for e in event if isinstance(event, list) else [event]:
            if e.get("axes", {}).get("time", 0) >= 3 and "roi" not in changed:
                hold[0].setROI(*ROI)
                changed.add("roi")
        return event

    def events(times: list[int], channels: list[str]) -> list[dict[str, Any]]:
        return [{"axes": {"time": t, "channel": c}, "config_group": ["Channel", c]} for t in times for c in channels]

    seen: list[tuple[str, int, np.ndarray, np.ndarray, dict[str, Any]]] = []
    result: dict[str, Any] = {}
    try:
        prepare(core)
        use_as_pycromanager_core(core)
        models = ModelSet({"FITC": fitc, "TRITC": tritc})
        dens = {"FITC": load_denoiser(fitc, cfg), "TRITC": load_denoiser(tritc, cfg)}
        with running_server(models, cfg) as server:
            with denoise_hook(server.endpoints, keep_raw=out / "raw") as hook:

                def process(image: np.ndarray, meta: dict[str, Any]) -> Any:
                    raw = np.array(image, copy=True)
                    axes = dict(meta["Axes"])
                    denoised, info = hook(image, meta)
                    seen.append((str(axes["channel"]), int(axes["time"]), raw, np.array(denoised), dict(info)))
                    return denoised, info

                with Acquisition(directory=str(out), name="before", image_process_fn=process,
                                 show_display=False) as acq:
                    acq.acquire(events([0, 1], CHANNELS))
                acq.get_dataset().close()
                core.renameConfig("Channel", "TRITC", RENAMED)  # the user edits the channel group
                with Acquisition(directory=str(out), name="after", image_process_fn=process,
                                 pre_hardware_hook_fn=new_roi, show_display=False) as acq:
                    acq.acquire(events([2, 3], [CHANNELS[0], RENAMED]))
            with StreamClient(server.endpoints) as client:
                status = client.status()
        acq.get_dataset().close()

        expected = True
        held: dict[str, list[np.ndarray]] = {}
        for channel, _, raw, denoised, _ in seen:  # in the order the hook was called
            if channel == RENAMED:
                expected &= bool(np.array_equal(denoised, raw))
                continue
            frames = held.setdefault(channel, [])
            if frames and frames[-1].shape != raw.shape:
                frames.clear()
            expected &= bool(np.array_equal(denoised, dens[channel](raw, previous=frames[-(K - 1):])))
            frames.append(raw)
        times, channels, identical = [], [], True
        for path in hook.raw_records:
            with Dataset(path) as ds:
                coords = ds.get_image_coordinates_list()
                times.append(sorted({int(c["time"]) for c in coords}))
                channels.append(sorted({str(c["channel"]) for c in coords}))
                for channel, t, raw, _, _ in seen:
                    if {"time": t, "channel": channel} in coords:
                        identical &= bool(np.array_equal(np.asarray(ds.read_image(time=t, channel=channel)), raw))
        flags: dict[str, list[str]] = {}
        for channel, _, _, _, info in seen:
            flags.setdefault(channel, []).extend(info.get("n2n-flags", []))
        result = {
            "hook": hook.counts(), "raw_records": hook.raw_records, "raw_times": times, "raw_channels": channels,
            "raw_identical": identical and sum(len(c) for c in channels) > 0,
            "shapes": {str(t): list(raw.shape) for _, t, raw, _, _ in seen},
            "flags": {c: f for c, f in flags.items() if f}, "denoised_as_expected": expected,
            "no_model": status["no_model"], "history_resets": status["history_resets"],
            "said_no_model": sum(f"'{RENAMED}'" in line for line in said.lines),
            "said_new_record": sum("continues in" in line for line in said.lines),
        }
    finally:
        logger.removeHandler(said)
        hold.clear()
        close_core(core)  # also stops pycromanager's acquisition engine, which was driving this core
        del core
        gc.collect()
    result["engine_released"] = Engine.get_instance() is None
    deadline = time.monotonic() + 30  # pycromanager's, ndstorage's and ZeroMQ's threads may still be ending
    while True:
        left = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    result["threads_left"] = left
    return result


if __name__ == "__main__":
    outcome = main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
    gc.collect()  # the core, held in pycromanager's reference cycles, released before the interpreter's teardown
    print(json.dumps(outcome))
