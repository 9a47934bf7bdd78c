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

In the simulated microscope (:mod:`streamer.micromanager.microscope`: filter wheel, XY and Z stages) each
frame shows what is under the objective when it starts: the wheel's fluorophore, the window of the
sample plane at the XY stage's position (``PixelSizeUm``), blurred by the distance of the Z stage from
``FocalPlaneUm`` (``DefocusBlurPxPerUm``). The density of each (channel, position, plane) is rendered
once and cached; the noise of every frame is drawn afresh from one seeded stream. Without a wheel or
stages (or with the wheel ``Open``, at the home position, in focus) the frames are exactly those of
:class:`~streamer.sources.SimulatedCamera`. :meth:`SimulatedMMCamera.expected` is the truth of any
(channel, position, plane).

A region of interest (``core.setROI(x, y, width, height)``, ``core.clearROI()``) crops the sensor's frame; it takes
effect from the next frame, also while a sequence runs (the frame size changes mid-stream, as after a new ROI in a
live session), and each frame's ``Width``, ``Height``, ``ROI-X-start`` and ``ROI-Y-start`` say its own. A new
``Width`` or ``Height`` (another sensor) clears the ROI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from pymmcore_plus.experimental.unicore import CameraDevice

from ..sources.simulated import SimulatedCamera, SimulatedCameraConfig
from .microscope import CHANNELS, MicroscopePart, MicroscopeState, OpticsConfig, SampleWorld

__all__ = ["SimulatedMMCamera"]


class _Sensor(SimulatedCamera):
    """The simulated camera's sensor (photons → ADU, one seeded noise stream) looking at the density ``show``
    puts under it: the microscope's current view."""

    def __init__(self, config: SimulatedCameraConfig, density: np.ndarray) -> None:
        super().__init__(config.model_copy(update={"sample": "flat"}))  # the sample comes from the microscope
        self.show(density, config)

    def show(self, density: np.ndarray, config: SimulatedCameraConfig) -> None:
        self._density = density
        self.config = config


_View = tuple[str, int, int, float]  # channel, window top and left (px), defocus sigma (px)


class SimulatedMMCamera(MicroscopePart, CameraDevice):
    """A physically based fluorescence camera for Micro-Manager, written in Python."""

    role = "camera"

    def __init__(self, config: SimulatedCameraConfig | None = None) -> None:
        super().__init__()
        self._config = config or SimulatedCameraConfig()
        self._optics = OpticsConfig()
        self._camera: _Sensor | None = None
        self._world: SampleWorld | None = None
        self._shown: _View | None = None  # the view the sensor looks at
        self._replay: list[np.ndarray] = []
        self._replay_frames = 0
        self._frame_index = 0  # frames delivered since the sample was set up (drift, bleaching)
        self._roi: tuple[int, int, int, int] | None = None  # x, y, width, height on the sensor (None: all of it)
        self._cam_lock = threading.Lock()
        for prop, field, kind in (("Width", "width", int), ("Height", "height", int), ("Seed", "seed", int),
                                  ("PeakPhotonRate", "peak_photon_rate", float)):
            self.register_property(prop, getter=_getter(field), setter=_setter(field, kind), property_type=kind)
        self.register_property("DriftXPixelsPerFrame", getter=_get_drift_x, setter=_set_drift_x, property_type=float)
        self.register_property("ReplayFrames", getter=_get_replay, setter=_set_replay, limits=(0, 1000),
                               property_type=int)
        self.register_property("SimulatorFrame", getter=_get_frame_index, is_read_only=True, property_type=int)
        for prop, field, limits in (("PixelSizeUm", "pixel_size_um", (0.001, 100.0)),
                                    ("FocalPlaneUm", "focal_plane_um", None),
                                    ("DefocusBlurPxPerUm", "defocus_px_per_um", (0.0, 100.0))):
            self.register_property(prop, getter=_optics_getter(field), setter=_optics_setter(field), limits=limits,
                                   property_type=float)

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
            self._world = None
            self._shown = None
            self._replay = []
            self._frame_index = 0
            if field in ("width", "height"):
                self._roi = None  # another sensor: the region of the old one means nothing on it

    def _set_optics(self, field: str, value: float) -> None:
        """An optics property (its limits already checked by the core); the next frame's view follows."""
        self._optics = replace(self._optics, **{field: value})

    def _set_replay(self, n: int) -> None:
        with self._cam_lock:
            self._replay_frames = n
            self._replay = []

    # --- the microscope's view -------------------------------------------------------------------------
    @property
    def optics(self) -> OpticsConfig:
        return self._optics

    def _state(self) -> MicroscopeState:
        scope = self._microscope
        return scope.state() if scope is not None else MicroscopeState()

    def _view(self, state: MicroscopeState) -> _View:
        top, left = self._optics.window(state.x_um, state.y_um)
        return state.channel, top, left, self._optics.defocus_px(state.z_um)

    def _sample(self, config: SimulatedCameraConfig) -> SampleWorld:
        """The sample plane for the camera's setting (kept, with its cache, until a setting changes it)."""
        world = self._world
        if world is None or (world.seed, world.psf_sigma_px, world.frame_shape) != (
                config.seed, config.psf_sigma_px, (config.height, config.width)):
            world = self._world = SampleWorld(config.seed, config.psf_sigma_px, (config.height, config.width))
        return world

    def _density(self, config: SimulatedCameraConfig, view: _View) -> np.ndarray:
        """The relative density the sensor sees in ``view``: the channel's sample (a flat field stays flat)."""
        if config.sample == "flat":
            return np.ones((config.height, config.width), dtype=np.float32)
        return self._sample(config).view(*view)

    @staticmethod
    def _channel_config(config: SimulatedCameraConfig, channel: str) -> SimulatedCameraConfig:
        brightness = CHANNELS[channel].brightness
        if brightness == 1.0:
            return config
        return config.model_copy(update={"peak_photon_rate": config.peak_photon_rate * brightness})

    def expected(self, channel: str | None = None, xy_um: tuple[float, float] | None = None,
                 z_um: float | None = None, exposure_ms: float | None = None, index: int = 0) -> np.ndarray:
        """The noise-free mean (float32 ADU, before quantisation and clipping) of a frame of ``channel`` (a name
        of :data:`~streamer.micromanager.microscope.FILTERS`: ``Open``, ``DAPI``, ``GFP``, ``Cy5``) at XY stage
        position ``xy_um`` and Z stage height ``z_um`` (µm, the coordinates the stages were loaded with) with
        ``exposure_ms``: the truth a denoised frame is scored against. None takes what the microscope and the
        camera have now (``z_um`` None without a Z stage: in focus). ``index`` is the frame's number since the
        sample was set up (it matters only with drift or bleaching). Safe to call while frames are acquired."""
        now = self._state()
        if channel is not None and channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}")
        x, y = xy_um if xy_um is not None else (now.x_um, now.y_um)
        state = MicroscopeState(channel=channel if channel is not None else now.channel, x_um=float(x),
                                y_um=float(y), z_um=z_um if z_um is not None else now.z_um)
        config = self._config
        if exposure_ms is not None:
            if not exposure_ms > 0:
                raise ValueError(f"exposure must be > 0 ms, got {exposure_ms}")
            config = config.model_copy(update={"exposure_ms": float(exposure_ms)})
        config = self._channel_config(config, state.channel)
        return _Sensor(config, self._density(config, self._view(state))).expected(index)

    def _look(self) -> MicroscopeState:
        """Point the sensor at what is under the objective now (called with the camera lock held)."""
        state = self._state()
        view = self._view(state)
        if self._camera is None or view != self._shown:
            config = self._channel_config(self._config, state.channel)
            density = self._density(config, view)
            if self._camera is None:
                self._camera = _Sensor(config, density)
            else:
                self._camera.show(density, config)
            self._shown = view
            self._replay = []
        return state

    def _render(self) -> tuple[np.ndarray, MicroscopeState, tuple[int, int, int, int]]:
        """The next frame (cropped to the ROI), what it shows and the ROI it was cropped to (called from MMCore's
        acquisition thread)."""
        with self._cam_lock:
            state = self._look()
            assert self._camera is not None
            if self._replay_frames:
                if not self._replay:
                    self._replay = [self._camera.read().pixels for _ in range(self._replay_frames)]
                frame = self._replay[self._frame_index % self._replay_frames]
            else:
                frame = self._camera.read().pixels
            self._frame_index += 1
            x, y, w, h = roi = self._roi or (0, 0, frame.shape[1], frame.shape[0])
            return frame[y:y + h, x:x + w], state, roi

    # --- CameraDevice -----------------------------------------------------------------------------
    def get_exposure(self) -> float:
        return self._config.exposure_ms

    def set_exposure(self, exposure: float) -> None:
        exposure = float(exposure)  # a configuration file passes text
        if not exposure > 0:
            raise ValueError(f"exposure must be > 0 ms, got {exposure}")
        with self._cam_lock:
            self._config = self._config.model_copy(update={"exposure_ms": float(exposure)})
            self._shown = None  # same sample and noise stream, new photon budget on the next frame
            self._replay = []

    def shape(self) -> tuple[int, int]:
        roi = self._roi
        return (roi[3], roi[2]) if roi is not None else (self._config.height, self._config.width)

    def get_roi(self) -> tuple[int, int, int, int]:
        return self._roi or (0, 0, self._config.width, self._config.height)

    def set_roi(self, x: int, y: int, width: int, height: int) -> None:
        x, y, width, height = (int(v) for v in (x, y, width, height))
        sensor_w, sensor_h = self._config.width, self._config.height
        if x < 0 or y < 0 or width < 1 or height < 1 or x + width > sensor_w or y + height > sensor_h:
            raise ValueError(f"expected a ROI within the {sensor_w}x{sensor_h} sensor (x, y >= 0, width and height "
                             f">= 1), got x={x}, y={y}, width={width}, height={height}")
        with self._cam_lock:
            self._roi = None if (x, y, width, height) == (0, 0, sensor_w, sensor_h) else (x, y, width, height)

    def clear_roi(self) -> None:
        with self._cam_lock:
            self._roi = None

    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def start_sequence(self, n: int | None,
                       get_buffer: Callable[[Sequence[int], Any], np.ndarray]) -> Iterator[Mapping]:
        dtype = self.dtype()
        interval = self._config.exposure_ms / 1000.0
        next_due = time.perf_counter()
        i = 0
        while n is None or i < n:
            frame, state, (x, y, w, h) = self._render()  # its own size: a ROI set meanwhile applies from here
            if n != 1:  # a snap returns at once; a sequence runs at the camera's frame rate
                now = time.perf_counter()
                if next_due > now:
                    time.sleep(next_due - now)
                next_due = max(now, next_due) + interval
            buf = get_buffer(frame.shape, dtype)
            buf[:] = frame
            i += 1
            z_um = state.z_um if state.z_um is not None else self._optics.focal_plane_um
            yield {"Width": str(w), "Height": str(h), "ROI-X-start": str(x), "ROI-Y-start": str(y),
                   "Exposure-ms": f"{self._config.exposure_ms:.3f}", "SimulatorFrame": str(self._frame_index - 1),
                   "SimulatorChannel": state.channel, "SimulatorXUm": f"{state.x_um:.4f}",
                   "SimulatorYUm": f"{state.y_um:.4f}", "SimulatorZUm": f"{z_um:.4f}"}


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


def _optics_getter(field: str) -> Callable[[Any], float]:
    return lambda cam: float(getattr(cam.optics, field))


def _optics_setter(field: str) -> Callable[[Any, Any], None]:
    return lambda cam, value: cam._set_optics(field, float(value))
