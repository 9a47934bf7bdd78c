"""Micro-Manager cores: an in-process one (pymmcore-plus) and a running GUI's (pycromanager).

Both are driven through the snake_case calls that pycromanager's Java bridge offers
(``start_continuous_sequence_acquisition``, ``pop_next_tagged_image``, …). pymmcore-plus
speaks camelCase only, so :class:`SnakeCaseCore` (a ``UniMMCore``, which also runs cameras
written in Python) adds the snake_case names, plus the few calls the Java core has and
pymmcore lacks (``pop_next_tagged_image``, ``get_tagged_image``, ``TaggedImage``). The same
class, registered with :func:`use_as_pycromanager_core`, is the core pycromanager's Python
acquisition engine drives, so ``Acquisition(..., image_process_fn=hook)`` runs on it.

An in-process core with a Python camera must be shut down before the interpreter exits
(sequence stopped, devices unloaded, the core released): :func:`close_core` does that, and
:func:`open_core` is a context manager that always calls it.
"""

from __future__ import annotations

import gc
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pymmcore_plus.experimental.unicore import Device, UniMMCore

from .microscope import MicroscopePart, microscope_of

__all__ = ["DEFAULT_BRIDGE_PORT", "JAVA_BRIDGE_HINT", "SIM_CFG", "MicroManagerUnavailable", "SnakeCaseCore",
           "TaggedImage", "close_core", "connect_gui", "load_core", "open_core", "release_pycromanager_core",
           "use_as_pycromanager_core"]

log = logging.getLogger("n2n.micromanager")

DEFAULT_BRIDGE_PORT = 4827
JAVA_BRIDGE_HINT = (
    "Start Micro-Manager 2.0, choose Tools > Options and tick 'Run server on port {port}' (needed once; "
    "it is remembered), then try again; or give a Micro-Manager configuration file (--mm-config, "
    "source.config_file) to run an in-process core instead of attaching to the GUI."
)


class MicroManagerUnavailable(RuntimeError):
    """No Micro-Manager core could be reached (GUI not running, ZMQ server off, bad config)."""


class TaggedImage:
    """Pixels plus tags, as MMCoreJ and pycromanager's Python backend pass them around."""

    def __init__(self, tags: dict[str, Any] | None, pix: np.ndarray | None) -> None:
        self.tags = tags
        self.pix = pix


def _snake(name: str) -> str:
    s = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", s).lower()


_Tagged = TaggedImage


class SnakeCaseCore(UniMMCore):
    """``UniMMCore`` with the Java bridge's snake_case names (``getImageWidth`` → ``get_image_width``)."""

    TaggedImage = _Tagged  # pycromanager's engine makes its own (an end-of-acquisition marker)

    def __getattr__(self, name: str) -> Any:
        # only reached for names the class lacks: map snake_case onto the camelCase method
        if name.startswith("_") or "_" not in name:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        camel = _SNAKE_TO_CAMEL.get(name)
        if camel is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r} (no camelCase "
                                 "Micro-Manager call of that name either)")
        return getattr(self, camel)

    def loadPyDevice(self, label: str, device: Device) -> None:
        """``UniMMCore.loadPyDevice``, then a part of the simulated microscope (camera, filter wheel, stages)
        joins this core's :class:`~streamer.micromanager.microscope.SimulatedMicroscope`, where the camera finds
        the others (Micro-Manager gives a device no handle on them)."""
        super().loadPyDevice(label, device)
        if isinstance(device, MicroscopePart):
            microscope_of(self).join(device)

    load_py_device = loadPyDevice

    def pop_next_tagged_image(self) -> _Tagged:
        img, md = self.popNextImageAndMD()
        return _Tagged(dict(md), img)

    def get_last_tagged_image(self) -> _Tagged:
        img, md = self.getLastImageAndMD()
        return _Tagged(dict(md), img)

    def get_tagged_image(self, cam_index: int = 0, camera: str | None = None, height: int | None = None,
                         width: int | None = None, binning: Any = None, pixel_type: Any = None,
                         roi_x_start: Any = None, roi_y_start: Any = None) -> _Tagged:
        """After ``snap_image``: the image and its tags (pycromanager's Python-backend signature)."""
        pix = self.getImage()
        tags: dict[str, Any] = {"Camera": camera or self.getCameraDevice(), "Height": pix.shape[0],
                                "Width": pix.shape[1], "PixelType": f"GRAY{8 * pix.dtype.itemsize}",
                                "CameraChannelIndex": cam_index, "Exposure-ms": self.getExposure()}
        return _Tagged(tags, pix)


_SNAKE_TO_CAMEL: dict[str, str] = {
    _snake(n): n for n in dir(SnakeCaseCore) if not n.startswith("_") and n[:1].islower() and not n.islower()
}


#: The built-in simulated session, identical to ``configs/micromanager/sim.cfg`` (a test checks).
SIM_CFG = """\
# The embedded default Micro-Manager session: a simulated microscope as Python devices run by
# pymmcore-plus's UniMMCore (no hardware, no Java): the simulated camera (streamer/sources/simulated.py
# physics), an emission filter wheel (Open, DAPI, GFP, Cy5), an XY stage and a Z stage (focus).
# Lines starting '#py ' are Python devices (ordinary Micro-Manager ignores them as comments).
#py pyDevice,Camera,streamer.micromanager.camera,SimulatedMMCamera
#py pyDevice,Emission,streamer.micromanager.microscope,EmissionFilterWheel
#py pyDevice,XY,streamer.micromanager.microscope,SimulatedXYStage
#py pyDevice,Z,streamer.micromanager.microscope,SimulatedZStage
#py Property,Camera,Width,512
#py Property,Camera,Height,512
#py Property,Camera,Exposure,10.0
#py Property,Core,Camera,Camera
#py Property,Core,XYStage,XY
#py Property,Core,Focus,Z
# The Channel group: one preset per fluorophore (the wheel starts Open: the camera's original sample).
#py ConfigGroup,Channel,DAPI,Emission,Label,DAPI
#py ConfigGroup,Channel,GFP,Emission,Label,GFP
#py ConfigGroup,Channel,Cy5,Emission,Label,Cy5
#py Property,Core,ChannelGroup,Channel
# No shutter: the sample is always lit (pymmcore-plus's MDA would otherwise try to close a shutter).
#py Property,Core,AutoShutter,0
"""


def load_core(config_file: str | Path = "sim") -> SnakeCaseCore:
    """An in-process Micro-Manager core loaded from a ``.cfg`` file (``#py`` lines load Python
    devices); ``"sim"`` is the built-in simulated session (:data:`SIM_CFG`)."""
    if str(config_file) == "sim":
        with tempfile.TemporaryDirectory(prefix="n2n-mm-") as tmp:
            cfg = Path(tmp) / "sim.cfg"
            cfg.write_text(SIM_CFG)
            return load_core(cfg)
    path = Path(config_file)
    if not path.is_file():
        raise MicroManagerUnavailable(f"Micro-Manager configuration file not found: {path}")
    core = SnakeCaseCore(mm_path=_micromanager_path(path))
    try:
        core.loadSystemConfiguration(str(path))
    except Exception as exc:
        close_core(core)
        raise MicroManagerUnavailable(f"cannot load Micro-Manager configuration {path}: {exc}") from exc
    if not core.getCameraDevice():
        close_core(core)
        raise MicroManagerUnavailable(f"{path} sets no camera (add 'Property,Core,Camera,<label>')")
    _declare_pixel_size(core)
    return core


def _declare_pixel_size(core: SnakeCaseCore) -> None:
    """The simulated camera's pixel size (its ``PixelSizeUm``) as the core's, where the configuration declares none:
    an MDA's writers scale the image axes by it (a ``.cfg`` cannot key a pixel-size preset on a Python device's
    property, so it is declared here; a configuration's own preset wins)."""
    camera = core.getCameraDevice()
    try:
        if core.getPixelSizeUm() > 0 or not core.hasProperty(camera, "PixelSizeUm"):
            return
        core.definePixelSizeConfig("n2n-sim")
        core.setPixelSizeUm("n2n-sim", float(core.getProperty(camera, "PixelSizeUm")))
        core.setPixelSizeConfig("n2n-sim")
    except Exception as exc:  # a core that cannot: the writers then say pixels, not µm
        log.debug("pixel size not declared: %s", exc)


def _micromanager_path(config_file: Path) -> str:
    """An installed Micro-Manager's folder (for C++ device adapters a configuration may also name),
    else the configuration's own folder. pymmcore-plus logs an error when it finds none; a
    configuration of Python devices needs none, so ask quietly."""
    from pymmcore_plus import find_micromanager

    pm_log = logging.getLogger("pymmcore-plus")
    level = pm_log.level
    pm_log.setLevel(logging.CRITICAL)
    try:
        found = find_micromanager()
    finally:
        pm_log.setLevel(level)
    return str(found) if found else str(config_file.resolve().parent)


def close_core(core: Any) -> None:
    """Stop any sequence, unload the devices and release an in-process core (safe to call twice)."""
    release_pycromanager_core(core)
    try:
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        deadline = time.monotonic() + 5
        while core.isSequenceRunning() and time.monotonic() < deadline:
            time.sleep(0.005)
        core.unloadAllDevices()
    except Exception as exc:  # an already-closed core; nothing more to release
        log.debug("closing core: %s", exc)
    gc.collect()


@contextmanager
def open_core(config_file: str | Path = "sim") -> Iterator[SnakeCaseCore]:
    """``load_core`` that always ends with ``close_core``."""
    core = load_core(config_file)
    try:
        yield core
    finally:
        close_core(core)
        del core
        gc.collect()


def _quiet_bridge_threads() -> None:
    """pyjavaz's socket thread raises (and prints a traceback) after a failed connection; the user
    already gets :class:`MicroManagerUnavailable` with the fix, so log those at debug level instead."""
    previous = threading.excepthook
    if getattr(previous, "_n2n_quiet", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name.startswith("BridgeSocketThread"):
            log.debug("pycromanager bridge thread %s: %s", args.thread.name, args.exc_value)
            return
        previous(args)

    hook._n2n_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def connect_gui(port: int = DEFAULT_BRIDGE_PORT, timeout_ms: int = 2000) -> Any:
    """The core of a running Micro-Manager GUI over pycromanager's Java bridge (ZMQ, ``port``)."""
    try:
        from pycromanager import Core
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MicroManagerUnavailable(f"pycromanager is not installed: {exc}") from exc
    _quiet_bridge_threads()
    try:
        return Core(port=port, timeout=timeout_ms)
    except Exception as exc:
        raise MicroManagerUnavailable(f"{exc}\n{JAVA_BRIDGE_HINT.format(port=port)}") from None


def use_as_pycromanager_core(core: SnakeCaseCore) -> None:
    """Make ``core`` the one pycromanager's ``Core()`` and its Python acquisition engine use, so
    ``pycromanager.Acquisition`` runs on it (the equivalent of ``start_headless(python_backend=True)``
    with a core loaded here)."""
    from mmpycorex import launcher
    from pycromanager.acquisition.acq_eng_py.internal.engine import Engine

    if core not in launcher._PYMMCORES:
        launcher._PYMMCORES.insert(0, core)
    if getattr(Engine, "singleton", None) is None:
        Engine(core)
    else:  # the engine is a process-wide singleton: point it at this core
        Engine.singleton.core = core


def release_pycromanager_core(core: Any) -> None:
    """Undo :func:`use_as_pycromanager_core` for ``core`` (no-op when it was not registered)."""
    try:
        from mmpycorex import launcher
    except ImportError:  # pragma: no cover
        return
    while core in launcher._PYMMCORES:
        launcher._PYMMCORES.remove(core)
    try:
        from pycromanager.acquisition.acq_eng_py.internal.engine import Engine
    except ImportError:  # pragma: no cover
        return
    engine = getattr(Engine, "singleton", None)
    if engine is not None and getattr(engine, "core", None) is core:
        # the engine is a process-wide singleton holding this core and two worker threads: stop them,
        # and forget it so that a later use_as_pycromanager_core starts a fresh one
        engine.shutdown()
        del Engine.singleton
