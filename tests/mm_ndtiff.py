"""Run by tests/test_dataset_ndtiff.py in a fresh process: a pycromanager ``Acquisition`` (its own NDTiff
writer) of time points × channels × z slices on the in-process Micro-Manager core: the simulated camera, a
Python Z stage, a ``Channel`` configuration group and a pixel size. Prints one JSON line (the dataset's
folder and what was asked), then tears the core down.

    python tests/mm_ndtiff.py OUT_DIR [T]
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Any

from pymmcore_plus.experimental.unicore import StageDevice

CHANNELS = ["FITC", "TRITC"]  # acquired in this order; presets of their own (the exposure only): the simulated
# microscope's DAPI/GFP presets would turn its filter wheel, and a first view of a new place renders for 40-120 ms,
# which would stretch the first time point
Z_STEP_UM = 1.5
PIXEL_SIZE_UM = 0.65
WIDTH, HEIGHT = 40, 24


class ZStage(StageDevice):
    """A focus drive that goes where it is told, at once."""

    def __init__(self) -> None:
        super().__init__()
        self._z = 0.0

    def set_position_um(self, val: float) -> None:
        self._z = float(val)

    def get_position_um(self) -> float:
        return self._z

    def home(self) -> None:
        self._z = 0.0

    def stop(self) -> None:
        pass

    def set_origin(self) -> None:
        self._z = 0.0


def prepare(core: Any) -> None:
    """The simulated camera at WIDTH × HEIGHT, a Z stage, a ``Channel`` preset per name of CHANNELS and the pixel
    size: the microscope this script acquires with (and tests/mm_hook_axes.py)."""
    core.setProperty("Camera", "Width", WIDTH)
    core.setProperty("Camera", "Height", HEIGHT)
    core.setExposure(1.0)
    if "Z" not in core.getLoadedDevices():  # the simulated microscope has its own Z stage
        core.loadPyDevice("Z", ZStage())
        core.initializeDevice("Z")
        core.setFocusDevice("Z")
    for i, name in enumerate(CHANNELS):
        core.defineConfig("Channel", name, "Camera", "Exposure", str(1.0 + i))
    presets = list(core.getAvailablePixelSizeConfigs())  # the camera's own (0.2 µm), set at load
    if not presets:
        core.definePixelSizeConfig("px")
        presets = ["px"]
    core.setPixelSizeUm(presets[0], PIXEL_SIZE_UM)
    core.setPixelSizeConfig(presets[0])


def events(n_time: int) -> list:
    """pycromanager's events for ``n_time`` time points × CHANNELS × 2 z planes, in its order (t, c, z)."""
    from pycromanager import multi_d_acquisition_events

    return multi_d_acquisition_events(num_time_points=n_time, time_interval_s=0.02, z_start=0, z_end=Z_STEP_UM,
                                      z_step=Z_STEP_UM, channel_group="Channel", channels=CHANNELS)


def main(out: Path, n_time: int) -> dict:
    from pycromanager import Acquisition

    from streamer.micromanager import close_core, load_core, use_as_pycromanager_core

    core = load_core("sim")
    try:
        prepare(core)
        use_as_pycromanager_core(core)
        with Acquisition(directory=str(out), name="mm", show_display=False) as acq:
            acq.acquire(events(n_time))
        dataset = acq.get_dataset()
        folder = dataset.path
        dataset.close()
    finally:
        close_core(core)  # also stops pycromanager's acquisition engine, which was driving this core
        del core
        gc.collect()
    return {"folder": str(folder), "time": n_time, "channels": CHANNELS, "z": 2, "z_step_um": Z_STEP_UM,
            "pixel_size_um": PIXEL_SIZE_UM, "height": HEIGHT, "width": WIDTH}


if __name__ == "__main__":
    outcome = main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    gc.collect()  # the core, held in pycromanager's reference cycles, released before the interpreter's teardown
    print(json.dumps(outcome))
