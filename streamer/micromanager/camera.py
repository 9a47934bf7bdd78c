"""The simulated camera as a Micro-Manager camera device (pymmcore-plus ``UniMMCore``).

The same physics as :class:`streamer.sources.SimulatedCamera` (photon flux × exposure ×
quantum efficiency → Poisson shot noise → read noise → gain and offset → uint16), served
through the real MMCore code path: properties, snap, sequence acquisition, the circular
buffer. Load it from a configuration file (``configs/micromanager/sim.cfg``)::

    #py pyDevice,Camera,streamer.micromanager.camera,SimulatedMMCamera
    #py Property,Core,Camera,Camera

Like a real camera in continuous mode it delivers one frame per exposure time (or as fast as
it can render, when that is slower). ``ReplayFrames`` > 0 renders that many frames once and
cycles through them: for measuring the Micro-Manager and streaming path at frame sizes the
simulator cannot render in real time (2048² takes about 0.25 s per frame on 2 CPU cores).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from pymmcore_plus.experimental.unicore import CameraDevice

from ..sources.simulated import SimulatedCamera, SimulatedCameraConfig

__all__ = ["SimulatedMMCamera"]


class SimulatedMMCamera(CameraDevice):
    """A physically based fluorescence camera for Micro-Manager, written in Python."""

    def __init__(self, config: SimulatedCameraConfig | None = None) -> None:
        super().__init__()
        self._config = config or SimulatedCameraConfig()
        self._camera: SimulatedCamera | None = None
        self._replay: list[np.ndarray] = []
        self._replay_frames = 0
        self._frame_index = 0  # frames delivered since the sample was set up (drift, bleaching)
        self._cam_lock = threading.Lock()
        for prop, field, kind in (("Width", "width", int), ("Height", "height", int), ("Seed", "seed", int),
                                  ("PeakPhotonRate", "peak_photon_rate", float)):
            self.register_property(prop, getter=_getter(field), setter=_setter(field, kind), property_type=kind)
        self.register_property("DriftXPixelsPerFrame", getter=_get_drift_x, setter=_set_drift_x, property_type=float)
        self.register_property("ReplayFrames", getter=_get_replay, setter=_set_replay, limits=(0, 1000),
                               property_type=int)
        self.register_property("SimulatorFrame", getter=_get_frame_index, is_read_only=True, property_type=int)

    # --- configuration --------------------------------------------------------------------------
    @property
    def config(self) -> SimulatedCameraConfig:
        return self._config

    def _set(self, field: str, value: Any) -> None:
        new = self._config.model_copy(update={field: value})
        SimulatedCameraConfig.model_validate(new.model_dump())  # the camera's own limits, with its message
        with self._cam_lock:
            self._config = new
            self._camera = None  # re-rendered on the next frame
            self._replay = []
            self._frame_index = 0

    def _set_replay(self, n: int) -> None:
        with self._cam_lock:
            self._replay_frames = n
            self._replay = []

    def _render(self) -> np.ndarray:
        """The next frame (called from MMCore's acquisition thread)."""
        with self._cam_lock:
            if self._camera is None:
                self._camera = SimulatedCamera(self._config)
            if self._replay_frames:
                if not self._replay:
                    self._replay = [self._camera.read().pixels for _ in range(self._replay_frames)]
                frame = self._replay[self._frame_index % self._replay_frames]
            else:
                frame = self._camera.read().pixels
            self._frame_index += 1
            return frame

    # --- CameraDevice -----------------------------------------------------------------------------
    def get_exposure(self) -> float:
        return self._config.exposure_ms

    def set_exposure(self, exposure: float) -> None:
        exposure = float(exposure)  # a configuration file passes text
        if not exposure > 0:
            raise ValueError(f"exposure must be > 0 ms, got {exposure}")
        with self._cam_lock:
            self._config = self._config.model_copy(update={"exposure_ms": float(exposure)})
            if self._camera is not None:  # same sample, new photon budget
                self._camera.config = self._config
            self._replay = []

    def shape(self) -> tuple[int, int]:
        return (self._config.height, self._config.width)

    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def start_sequence(self, n: int | None,
                       get_buffer: Callable[[Sequence[int], Any], np.ndarray]) -> Iterator[Mapping]:
        shape, dtype = self.shape(), self.dtype()
        interval = self._config.exposure_ms / 1000.0
        next_due = time.perf_counter()
        i = 0
        while n is None or i < n:
            frame = self._render()
            if n != 1:  # a snap returns at once; a sequence runs at the camera's frame rate
                now = time.perf_counter()
                if next_due > now:
                    time.sleep(next_due - now)
                next_due = max(now, next_due) + interval
            buf = get_buffer(shape, dtype)
            buf[:] = frame
            i += 1
            yield {"Exposure-ms": f"{self._config.exposure_ms:.3f}", "SimulatorFrame": str(self._frame_index - 1)}


# property accessors (MMCore passes text from configuration files: convert)
def _getter(field: str) -> Callable[[Any], Any]:
    return lambda cam: getattr(cam.config, field)


def _setter(field: str, kind: type) -> Callable[[Any, Any], None]:
    return lambda cam, value: cam._set(field, kind(value))


def _get_drift_x(cam: SimulatedMMCamera) -> float:
    return cam.config.drift_px_per_frame[1]


def _set_drift_x(cam: SimulatedMMCamera, value: Any) -> None:
    cam._set("drift_px_per_frame", (cam.config.drift_px_per_frame[0], float(value)))


def _get_replay(cam: SimulatedMMCamera) -> int:
    return cam._replay_frames


def _set_replay(cam: SimulatedMMCamera, value: Any) -> None:
    cam._set_replay(int(value))


def _get_frame_index(cam: SimulatedMMCamera) -> int:
    return cam._frame_index
