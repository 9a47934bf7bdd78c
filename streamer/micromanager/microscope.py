"""The simulated microscope: an emission filter wheel, an XY stage and a Z stage around the simulated camera.

Python devices for pymmcore-plus's ``UniMMCore``, loaded from the same ``.cfg`` as the camera
(``configs/micromanager/sim.cfg``)::

    #py pyDevice,Emission,streamer.micromanager.microscope,EmissionFilterWheel
    #py pyDevice,XY,streamer.micromanager.microscope,SimulatedXYStage
    #py pyDevice,Z,streamer.micromanager.microscope,SimulatedZStage
    #py Property,Core,XYStage,XY
    #py Property,Core,Focus,Z
    #py ConfigGroup,Channel,DAPI,Emission,Label,DAPI

so that a multi-dimensional acquisition (pymmcore-plus's MDA, pycromanager's engine) changes what the camera
sees: the wheel picks the fluorophore (``Open`` — no filter, the camera's original sample — ``DAPI`` nuclei,
``GFP`` cytoskeleton and cytoplasm, ``Cy5`` vesicles, each at its own brightness), the XY stage the field (the
sample is one seamless plane, the frame a window on it at the stage position over ``PixelSizeUm``), the Z stage
the focus (Gaussian defocus blur growing with the distance from ``FocalPlaneUm``).

Micro-Manager gives a device no handle on the others, so the devices of one core meet in a
:class:`SimulatedMicroscope`: :class:`~streamer.micromanager.core.SnakeCaseCore` (what ``load_core`` makes) joins
every :class:`MicroscopePart` it loads to its core's microscope, and each part leaves it when unloaded. The camera
reads the wheel and the stages there at the start of each frame, in MMCore's acquisition thread. On another
``UniMMCore`` the parts stay apart: the camera shows the ``Open`` sample at the home position, in focus.

The truth for scoring (the noise-free mean of a frame, float32 ADU) is
:meth:`SimulatedMicroscope.expected` (``microscope_of(core).expected("GFP", (100, 100), 2.0, 10.0)``), for any
channel, position and plane. A frame of a sequence acquisition says in its metadata what it showed
(``SimulatorChannel``, ``SimulatorXUm``, ``SimulatorYUm``, ``SimulatorZUm``); for a snapped one (pymmcore-plus's
MDA, pycromanager) the acquisition's event says it.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pymmcore_plus.experimental.unicore import StageDevice, StateDevice, XYStageDevice
from scipy import ndimage

from ..sources.simulated import render_sample

if TYPE_CHECKING:
    from .camera import SimulatedMMCamera

__all__ = ["CHANNELS", "CHANNEL_GROUP", "FILTERS", "OPEN", "ChannelSpec", "EmissionFilterWheel", "MicroscopePart",
           "MicroscopeState", "OpticsConfig", "SampleWorld", "SimulatedMicroscope", "SimulatedXYStage",
           "SimulatedZStage", "microscope_of"]

#: The configuration group that selects the fluorophore (``setConfig("Channel", "GFP")``), as in sim.cfg.
CHANNEL_GROUP = "Channel"
#: The wheel's position without a filter: the camera's original sample (``render_sample``), the state it starts in.
OPEN = "Open"

Structure = Literal["cells", "nuclei", "cytoskeleton", "vesicles"]


@dataclass(frozen=True)
class ChannelSpec:
    """A fluorophore: what structure it labels and how bright it is."""

    name: str
    structure: Structure
    brightness: float
    """Peak photon rate relative to the camera's ``PeakPhotonRate``."""


#: Every position of the emission filter wheel, in wheel order (state 0 is ``Open``).
CHANNELS: dict[str, ChannelSpec] = {spec.name: spec for spec in (
    ChannelSpec(OPEN, "cells", 1.0),
    ChannelSpec("DAPI", "nuclei", 0.25),
    ChannelSpec("GFP", "cytoskeleton", 1.0),
    ChannelSpec("Cy5", "vesicles", 0.5),
)}
#: The wheel's labels by state.
FILTERS: tuple[str, ...] = tuple(CHANNELS)


@dataclass(frozen=True)
class OpticsConfig:
    """How the stages map onto the sample: the camera's ``PixelSizeUm``, ``FocalPlaneUm``, ``DefocusBlurPxPerUm``."""

    pixel_size_um: float = 0.2
    """Sample-plane size of a camera pixel: an XY move of this many µm shifts the field by one pixel."""
    focal_plane_um: float = 0.0
    """The Z stage position at which the sample is in focus."""
    defocus_px_per_um: float = 1.5
    """Defocus blur: Gaussian sigma in pixels per µm away from the focal plane."""

    def window(self, x_um: float, y_um: float) -> tuple[int, int]:
        """The frame's top-left corner on the sample plane, in pixels (row, column), for a stage position."""
        return _nearest(y_um / self.pixel_size_um), _nearest(x_um / self.pixel_size_um)

    def defocus_px(self, z_um: float | None) -> float:
        """The defocus blur sigma in pixels at stage height ``z_um`` (None: no Z stage, in focus)."""
        if z_um is None:
            return 0.0
        return round(self.defocus_px_per_um * abs(z_um - self.focal_plane_um), 3)


def _nearest(v: float) -> int:
    return math.floor(v + 0.5)


@dataclass(frozen=True)
class MicroscopeState:
    """What is under the objective: the wheel's filter and the stages' positions (µm; ``z_um`` None: no Z stage)."""

    channel: str = OPEN
    x_um: float = 0.0
    y_um: float = 0.0
    z_um: float | None = None


# --- the sample ------------------------------------------------------------------------------------------------
TILE_PX = 256
"""The labelled channels' sample plane is generated in tiles of this size (cells whose centre lies in the tile)."""
_REACH_PX = 256  # nothing drawn for a cell reaches further than this from its tile
_LAYOUT, _NUCLEUS, _TEXTURE = 0, 1, 2  # random streams of a tile and of a cell


def _zigzag(i: int) -> int:
    """A tile index as a non-negative integer (SeedSequence takes no negative entropy)."""
    return 2 * i if i >= 0 else -2 * i - 1


@dataclass(frozen=True)
class _Cell:
    y: float
    x: float
    a: float  # half axes of the cell body (px)
    b: float
    theta: float
    seed: int

    def nucleus(self) -> tuple[float, float, float, float, float]:
        """Centre, half axes and angle of the nucleus: the same for every channel of the cell."""
        rng = np.random.default_rng([self.seed, _NUCLEUS])
        return (self.y + rng.normal(0, 0.08 * self.a), self.x + rng.normal(0, 0.08 * self.b),
                self.a * rng.uniform(0.35, 0.5), self.b * rng.uniform(0.4, 0.55), self.theta + rng.normal(0, 0.3))


def _r2(y: np.ndarray, x: np.ndarray, cy: float, cx: float, a: float, b: float, th: float) -> np.ndarray:
    """Squared elliptical radius of points (y, x): 1 on the ellipse's rim."""
    dy, dx = y - cy, x - cx
    u = (dx * np.cos(th) + dy * np.sin(th)) / a
    v = (-dx * np.sin(th) + dy * np.cos(th)) / b
    return u**2 + v**2


def _soft(r2: np.ndarray, steep: float) -> np.ndarray:
    """1 inside the ellipse, 0 outside, with a soft rim."""
    return 1.0 / (1.0 + np.exp(np.clip((r2 - 1.0) * steep, -50, 50)))


class _Canvas:
    """A window [y0, y0 + h) × [x0, x0 + w) of the sample plane that cells draw into in plane coordinates."""

    def __init__(self, y0: int, x0: int, h: int, w: int) -> None:
        self.y0, self.x0, self.h, self.w = y0, x0, h, w
        self.img = np.zeros((h, w))
        self.points = np.zeros((h, w))  # point emitters (filaments, vesicles), clipped before they are added

    def box(self, cy: float, cx: float, reach: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Plane coordinates of the whole square of half side ``reach`` around (cy, cx), or None if it misses."""
        y0, x0 = math.floor(cy - reach), math.floor(cx - reach)
        n = 2 * math.ceil(reach) + 1
        if y0 >= self.y0 + self.h or x0 >= self.x0 + self.w or y0 + n <= self.y0 or x0 + n <= self.x0:
            return None
        yy, xx = np.mgrid[y0:y0 + n, x0:x0 + n]
        return yy.astype(np.float64), xx.astype(np.float64)

    def add(self, yy: np.ndarray, xx: np.ndarray, patch: np.ndarray) -> None:
        """Add ``patch`` (drawn on the square ``box`` gave) where it overlaps the window."""
        py0, px0 = int(yy[0, 0]) - self.y0, int(xx[0, 0]) - self.x0
        sy0, sx0 = max(0, -py0), max(0, -px0)
        ey, ex = min(patch.shape[0], self.h - py0), min(patch.shape[1], self.w - px0)
        if ey > sy0 and ex > sx0:
            self.img[py0 + sy0:py0 + ey, px0 + sx0:px0 + ex] += patch[sy0:ey, sx0:ex]

    def add_points(self, y: np.ndarray, x: np.ndarray, weight: np.ndarray) -> None:
        iy, ix = np.floor(y + 0.5).astype(int) - self.y0, np.floor(x + 0.5).astype(int) - self.x0
        ok = (iy >= 0) & (iy < self.h) & (ix >= 0) & (ix < self.w)
        np.add.at(self.points, (iy[ok], ix[ok]), weight[ok])


def _draw_nucleus(canvas: _Canvas, cell: _Cell) -> None:
    """DAPI: the nucleus, a soft ellipse with a chromatin texture and one to three nucleoli."""
    cy, cx, a, b, th = cell.nucleus()
    reach = 1.6 * max(a, b)
    if (box := canvas.box(cy, cx, reach)) is None:
        return
    yy, xx = box
    rng = np.random.default_rng([cell.seed, _TEXTURE, 1])
    texture = ndimage.gaussian_filter(rng.random(yy.shape), 2.0)
    texture = (texture - texture.mean()) / (texture.std() + 1e-12)
    patch = _soft(_r2(yy, xx, cy, cx, a, b, th), 10.0) * np.clip(0.6 + 0.12 * texture, 0.0, None)
    for _ in range(int(rng.integers(1, 4))):  # nucleoli: dark holes in the chromatin
        r, phi = 0.5 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        ny = cy + r * (a * math.cos(phi) * math.sin(th) + b * math.sin(phi) * math.cos(th))
        nx = cx + r * (a * math.cos(phi) * math.cos(th) - b * math.sin(phi) * math.sin(th))
        s = rng.uniform(2.0, 4.0)
        patch *= 1.0 - 0.6 * np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / (2 * s * s))
    canvas.add(yy, xx, patch)


def _draw_cytoskeleton(canvas: _Canvas, cell: _Cell) -> None:
    """GFP: a dim cytoplasm and filaments, persistent random walks in it (the nucleus left dark)."""
    reach = 1.6 * max(cell.a, cell.b)
    if (box := canvas.box(cell.y, cell.x, reach)) is None:
        return
    yy, xx = box
    ny, nx, na, nb, nth = cell.nucleus()
    body = _soft(_r2(yy, xx, cell.y, cell.x, cell.a, cell.b, cell.theta), 6.0)
    canvas.add(yy, xx, 0.12 * body * (1.0 - 0.85 * _soft(_r2(yy, xx, ny, nx, na, nb, nth), 10.0)))
    rng = np.random.default_rng([cell.seed, _TEXTURE, 2])
    for _ in range(int(rng.integers(12, 22))):
        r, phi = 0.7 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        y = cell.y + r * (cell.a * math.cos(phi) * math.sin(cell.theta) + cell.b * math.sin(phi) * math.cos(cell.theta))
        x = cell.x + r * (cell.a * math.cos(phi) * math.cos(cell.theta) - cell.b * math.sin(phi) * math.sin(cell.theta))
        steps = int(rng.integers(60, 200))
        angle = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.08, steps))
        py, px = y + np.cumsum(0.7 * np.sin(angle)), x + np.cumsum(0.7 * np.cos(angle))
        inside = (_r2(py, px, cell.y, cell.x, cell.a, cell.b, cell.theta) < 1.0) & (
            _r2(py, px, ny, nx, na, nb, nth) > 1.0)  # in the cytoplasm, around the nucleus
        canvas.add_points(py[inside], px[inside], np.full(int(inside.sum()), rng.uniform(0.6, 1.0)))


def _draw_vesicles(canvas: _Canvas, cell: _Cell) -> None:
    """Cy5: vesicles, diffraction-limited spots of varied brightness in the cytoplasm, none in the nucleus."""
    rng = np.random.default_rng([cell.seed, _TEXTURE, 3])
    n = int(rng.integers(60, 140))
    r, phi = np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
    u, v = cell.a * r * np.cos(phi), cell.b * r * np.sin(phi)
    y = cell.y + u * math.sin(cell.theta) + v * math.cos(cell.theta)
    x = cell.x + u * math.cos(cell.theta) - v * math.sin(cell.theta)
    ny, nx, na, nb, nth = cell.nucleus()
    out = _r2(y, x, ny, nx, na, nb, nth) > 1.1
    canvas.add_points(y[out], x[out], rng.uniform(0.5, 3.0, n)[out])


_DRAW: dict[Structure, tuple[Callable[[_Canvas, _Cell], None], float, float]] = {
    # structure: (draw a cell, clip of the point emitters per pixel, scale of the point emitters)
    "nuclei": (_draw_nucleus, 0.0, 0.0),
    "cytoskeleton": (_draw_cytoskeleton, 1.5, 1.6),
    "vesicles": (_draw_vesicles, 3.0, 3.0),
}


class _LRU:
    """A bounded cache (by entries), safe to share between threads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: two threads may both make it, the same value
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value


class SampleWorld:
    """The sample plane of every channel for one camera setting (seed, PSF, frame size): deterministic, unbounded.

    ``Open`` is the camera's original sample (:func:`~streamer.sources.render_sample`) tiled over the plane, the
    tile at the origin with the camera's own seed (so the home position shows exactly the plain camera's sample),
    the others with seeds drawn from it. The labelled channels (DAPI, GFP, Cy5) share one layout of cells, drawn
    per :data:`TILE_PX` tile from the seed, each cell drawn whole wherever it reaches: the plane is seamless and a
    small move shifts the same field. :meth:`view` renders the window a frame shows, cached.
    """

    def __init__(self, seed: int, psf_sigma_px: float, frame_shape: tuple[int, int], cache_mb: int = 128) -> None:
        """``cache_mb`` bounds the rendered views kept (half as much again for the Open tiles)."""
        self.seed, self.psf_sigma_px, self.frame_shape = seed, psf_sigma_px, frame_shape
        per_view = max(1, frame_shape[0] * frame_shape[1] * 4)
        self._views = _LRU(max(4, cache_mb * 2**20 // per_view))
        self._tiles = _LRU(max(4, cache_mb * 2**20 // 2 // per_view))  # Open tiles, frame-sized
        self._cells = _LRU(512)  # cell layouts of tiles

    def view(self, channel: str, top: int, left: int, defocus_px: float = 0.0) -> np.ndarray:
        """Relative fluorophore density (float32, read-only) of ``channel`` in the frame-sized window whose
        top-left corner is (``top``, ``left``) on the plane, blurred by the PSF and ``defocus_px`` (Gaussian sigma)."""
        if channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}")
        key = (channel, top, left, round(float(defocus_px), 3))
        return self._views.get(key, lambda: self._render(CHANNELS[channel].structure, top, left, key[3]))

    def _render(self, structure: Structure, top: int, left: int, defocus_px: float) -> np.ndarray:
        h, w = self.frame_shape
        if structure == "cells":
            out = self._open_window(top, left, defocus_px)
        else:
            sigma = math.hypot(self.psf_sigma_px, defocus_px)
            pad = math.ceil(4 * sigma) + 2 if sigma > 0 else 0
            canvas = _Canvas(top - pad, left - pad, h + 2 * pad, w + 2 * pad)
            draw, clip, scale = _DRAW[structure]
            for cell in self._cells_near(canvas):
                draw(canvas, cell)
            img = canvas.img + scale * np.minimum(canvas.points, clip)
            if sigma > 0:
                img = ndimage.gaussian_filter(img, sigma, mode="nearest")[pad:pad + h, pad:pad + w]
            out = img.astype(np.float32)
        out.flags.writeable = False
        return out

    def _cells_near(self, canvas: _Canvas) -> list[_Cell]:
        t0, t1 = (canvas.y0 - _REACH_PX) // TILE_PX, (canvas.y0 + canvas.h + _REACH_PX) // TILE_PX
        l0, l1 = (canvas.x0 - _REACH_PX) // TILE_PX, (canvas.x0 + canvas.w + _REACH_PX) // TILE_PX
        cells: list[_Cell] = []
        for ty in range(t0, t1 + 1):
            for tx in range(l0, l1 + 1):
                cells.extend(self._cells.get((ty, tx), partial(self._layout, ty, tx)))
        return cells

    def _layout(self, ty: int, tx: int) -> list[_Cell]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _LAYOUT, _zigzag(ty), _zigzag(tx)]))
        return [_Cell(y=(ty + rng.random()) * TILE_PX, x=(tx + rng.random()) * TILE_PX, a=rng.uniform(40, 75),
                      b=rng.uniform(30, 55), theta=rng.uniform(0, math.pi), seed=int(rng.integers(2**62)))
                for _ in range(int(rng.integers(2, 5)))]

    def _open_tile(self, ty: int, tx: int) -> np.ndarray:
        def make() -> np.ndarray:
            h, w = self.frame_shape
            seed = self.seed if (ty, tx) == (0, 0) else int(
                np.random.SeedSequence([self.seed, _zigzag(ty), _zigzag(tx)]).generate_state(1)[0])
            return render_sample(h, w, self.psf_sigma_px, seed).astype(np.float32)
        return self._tiles.get((ty, tx), make)

    def _open_window(self, top: int, left: int, defocus_px: float) -> np.ndarray:
        """The Open sample in the window: a crop of the mosaic of tiles (with a margin for the defocus blur)."""
        h, w = self.frame_shape
        pad = math.ceil(4 * defocus_px) + 2 if defocus_px > 0 else 0
        if not pad and top % h == 0 and left % w == 0:  # exactly one tile: the very array (the plain camera's)
            return self._open_tile(top // h, left // w)
        y0, x0, hh, ww = top - pad, left - pad, h + 2 * pad, w + 2 * pad
        mosaic = np.empty((hh, ww), dtype=np.float32)
        for ty in range(y0 // h, (y0 + hh - 1) // h + 1):
            for tx in range(x0 // w, (x0 + ww - 1) // w + 1):
                tile = self._open_tile(ty, tx)
                a0, a1 = max(y0, ty * h), min(y0 + hh, (ty + 1) * h)
                b0, b1 = max(x0, tx * w), min(x0 + ww, (tx + 1) * w)
                mosaic[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = tile[a0 - ty * h:a1 - ty * h, b0 - tx * w:b1 - tx * w]
        if pad:
            mosaic = ndimage.gaussian_filter(mosaic, defocus_px, mode="nearest")[pad:pad + h, pad:pad + w]
        return mosaic


# --- the devices -------------------------------------------------------------------------------------------------
class SimulatedMicroscope:
    """The simulated devices of one core, where the camera finds the wheel and the stages.

    Get a core's with :func:`microscope_of`; ``SnakeCaseCore`` joins the parts as it loads them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, MicroscopePart] = {}

    def join(self, part: MicroscopePart) -> None:
        """Add a part (the first of each role counts: one camera, one wheel, one XY stage, one Z stage)."""
        with self._lock:
            self._parts.setdefault(part.role, part)
            part._microscope = self

    def leave(self, part: MicroscopePart) -> None:
        with self._lock:
            if self._parts.get(part.role) is part:
                del self._parts[part.role]
            part._microscope = None

    def _part(self, role: str) -> Any:
        with self._lock:
            return self._parts.get(role)

    @property
    def camera(self) -> SimulatedMMCamera | None:
        return self._part("camera")  # type: ignore[no-any-return]

    def state(self) -> MicroscopeState:
        """The wheel's filter and the stages' positions now (``Open``, 0, 0 and in focus for a missing part)."""
        wheel, xy, z = self._part("wheel"), self._part("xy"), self._part("z")
        x, y = xy.physical() if xy is not None else (0.0, 0.0)
        return MicroscopeState(channel=wheel.channel() if wheel is not None else OPEN, x_um=x, y_um=y,
                               z_um=z.physical() if z is not None else None)

    def expected(self, channel: str | None = None, xy_um: tuple[float, float] | None = None,
                 z_um: float | None = None, exposure_ms: float | None = None, index: int = 0) -> np.ndarray:
        """The noise-free mean (float32 ADU) of a frame of ``channel`` at stage position ``xy_um`` and height
        ``z_um`` with ``exposure_ms``: the truth to score a denoised frame against. None: as the microscope is
        now. ``index``: frames since the camera's sample was set up (drift, bleaching; 0 without them)."""
        camera = self.camera
        if camera is None:
            raise RuntimeError("expected a simulated camera on this core (SimulatedMMCamera), got none")
        return camera.expected(channel, xy_um, z_um, exposure_ms, index)


_MICROSCOPES: weakref.WeakKeyDictionary[Any, SimulatedMicroscope] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def microscope_of(core: Any) -> SimulatedMicroscope:
    """The simulated microscope of ``core`` (made on first use; it lives as long as the core)."""
    with _REGISTRY_LOCK:
        scope = _MICROSCOPES.get(core)
        if scope is None:
            scope = _MICROSCOPES[core] = SimulatedMicroscope()
        return scope


class MicroscopePart:
    """A device of the simulated microscope (mixed into a unicore ``Device``): it joins its core's
    :class:`SimulatedMicroscope` when loaded and leaves it at shutdown (unload)."""

    role: ClassVar[str] = ""
    _microscope: SimulatedMicroscope | None = None

    @property
    def microscope(self) -> SimulatedMicroscope | None:
        """The microscope this part joined (None: loaded on a core that does not join parts)."""
        return self._microscope

    def shutdown(self) -> None:
        if self._microscope is not None:
            self._microscope.leave(self)
        super().shutdown()  # type: ignore[misc]


class EmissionFilterWheel(MicroscopePart, StateDevice):
    """The emission filter wheel: which fluorophore the camera sees (``Open`` — no filter — ``DAPI``, ``GFP``, ``Cy5``).

    The cfg's ``Channel`` group sets its ``Label``. A relabelled position keeps its filter: the camera renders by
    position, so the truth's channel names are always those of :data:`FILTERS`."""

    role = "wheel"

    def __init__(self) -> None:
        self._state = 0
        super().__init__(dict(enumerate(FILTERS)))

    def get_state(self) -> int:
        return self._state

    def set_state(self, position: int) -> None:
        position = int(position)
        if not 0 <= position < len(FILTERS):
            raise ValueError(f"filter position must be 0 to {len(FILTERS) - 1}, got {position}")
        self._state = position

    def channel(self) -> str:
        """The filter in the light path."""
        return FILTERS[self._state]


class SimulatedXYStage(MicroscopePart, XYStageDevice):
    """The XY stage: moves the sample under the objective (µm; the frame is the window at the position)."""

    role = "xy"

    def __init__(self) -> None:
        super().__init__()
        self._xy = (0.0, 0.0)  # where it is, in the coordinates it was loaded with
        self._origin = (0.0, 0.0)  # set by set_origin: reported = physical - origin

    def physical(self) -> tuple[float, float]:
        """The position in the coordinates the stage was loaded with (what the camera renders; unaffected by
        ``set_origin``)."""
        return self._xy

    def set_position_um(self, x: float, y: float) -> None:
        self._xy = (float(x) + self._origin[0], float(y) + self._origin[1])
        self.core.events.XYStagePositionChanged.emit(self.get_label(), float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        return self._xy[0] - self._origin[0], self._xy[1] - self._origin[1]

    def set_origin_x(self) -> None:
        self._origin = (self._xy[0], self._origin[1])

    def set_origin_y(self) -> None:
        self._origin = (self._origin[0], self._xy[1])

    def home(self) -> None:
        self._xy = (0.0, 0.0)

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""


class SimulatedZStage(MicroscopePart, StageDevice):
    """The focus drive (µm): the sample is sharp at the camera's ``FocalPlaneUm`` and blurs away from it."""

    role = "z"

    def __init__(self) -> None:
        super().__init__()
        self._z = 0.0
        self._origin = 0.0

    def physical(self) -> float:
        """The height in the coordinates the stage was loaded with (unaffected by ``set_origin``)."""
        return self._z

    def set_position_um(self, val: float) -> None:
        self._z = float(val) + self._origin
        self.core.events.stagePositionChanged.emit(self.get_label(), float(val))

    def get_position_um(self) -> float:
        return self._z - self._origin

    def set_origin(self) -> None:
        self._origin = self._z

    def home(self) -> None:
        self._z = 0.0

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""
