"""Frames from a Micro-Manager core: a running GUI's (pycromanager, Java bridge) or an in-process
one (pymmcore-plus, a ``.cfg`` file). Only calls both offer are used (see
:mod:`streamer.micromanager.core`).

If the core is already streaming (the user pressed Live), the source follows that stream and
leaves it running on close; otherwise it starts its own continuous acquisition and stops it on
close (its own acquisition starts at the first :meth:`read`). Frames are popped in order from
the core's circular buffer; an empty buffer is polled
with a short sleep (never a busy spin, which starves a 2-core machine). Pixels come back 2-D in
the camera's dtype; tags become plain metadata (numbers as numbers).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ._base import BaseSource, EndOfStream, Frame

__all__ = ["FrameTimeout", "MicroManagerSource", "is_simulated", "normalize_tagged_image"]

log = logging.getLogger("n2n.micromanager")

_INT_TAGS = ("ImageNumber", "Width", "Height", "Binning", "ROI-X-start", "ROI-Y-start", "CameraChannelIndex",
             "SimulatorFrame")
_FLOAT_TAGS = ("ElapsedTime-ms", "Exposure-ms")


class FrameTimeout(TimeoutError):
    """No frame arrived from the Micro-Manager core in time."""


def _dtype_for(itemsize: int) -> np.dtype:
    """The grayscale dtype of a camera with ``itemsize`` bytes per pixel (MMCore's GRAY8/16/32)."""
    dtypes: dict[int, np.dtype] = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.float32)}
    if itemsize not in dtypes:
        raise ValueError(f"unsupported Micro-Manager pixel size: {itemsize} bytes per pixel; expected 1, 2 or 4 "
                         "(GRAY8, GRAY16 or GRAY32; colour cameras are not supported)")
    return dtypes[itemsize]


def normalize_tagged_image(pix: Any, tags: dict[str, Any] | None,
                           dtype: np.dtype | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """2-D pixels and typed metadata from a tagged image of either core.

    Over the Java bridge pixels arrive flat and tags hold Height/Width as text; pymmcore-plus gives
    2-D arrays. Java has no unsigned types, so 16-bit pixels may come as int16: they are
    reinterpreted as uint16 (the same bits)."""
    meta: dict[str, Any] = {}
    for key, value in (tags or {}).items():
        if key in _INT_TAGS:
            try:
                value = int(float(value))
            except (TypeError, ValueError):
                pass
        elif key in _FLOAT_TAGS:
            try:
                value = float(value)
            except (TypeError, ValueError):
                pass
        meta[str(key)] = value
    arr = np.asarray(pix)
    if arr.ndim == 1:
        h, w = meta.get("Height"), meta.get("Width")
        if not isinstance(h, int) or not isinstance(w, int) or h * w != arr.size:
            raise ValueError(f"a flat image of {arr.size} pixels with tags Height={h!r}, Width={w!r}: "
                             "expected Height × Width to equal the pixel count")
        arr = arr.reshape(h, w)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {arr.shape}")
    if dtype is not None and arr.dtype != dtype:
        if arr.dtype.itemsize == dtype.itemsize and arr.dtype.kind in "iu" and dtype.kind in "iu":
            arr = arr.view(dtype)
        else:
            arr = arr.astype(dtype)
    return arr, meta


def is_simulated(core: Any, camera: str) -> bool:
    """The camera is n2n-live's own simulated one (the Python device in ``streamer.micromanager.camera``)."""
    try:
        return str(core.get_device_library(camera)) == "streamer.micromanager.camera"
    except Exception:  # a GUI core or a library without the call: not ours
        return False


class MicroManagerSource(BaseSource):
    """Consecutive frames from a Micro-Manager core's sequence acquisition.

    ``core`` is a pycromanager ``Core()`` or a :class:`~streamer.micromanager.core.SnakeCaseCore`.
    ``exposure_ms`` sets the camera's exposure first (None: leave it). ``timeout_s`` bounds the
    wait for each frame. ``missed`` counts frames the core overwrote before they were read
    (image numbers that were skipped).
    """

    def __init__(self, core: Any, exposure_ms: float | None = None, timeout_s: float = 10.0,
                 poll_interval_s: float = 0.0005) -> None:
        super().__init__(0.0)
        self.core = core
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.camera = str(core.get_camera_device())
        if not self.camera:
            raise ValueError("the Micro-Manager core has no camera selected (Core-Camera is empty)")
        self.following = bool(core.is_sequence_running())
        self.simulated = is_simulated(core, self.camera)
        """n2n-live's simulated camera (synthetic cells, the embedded default), not a microscope: said on every
        command's first line and in every file's metadata (``n2n-simulated``)."""
        if exposure_ms is not None:
            if self.following:
                log.warning("Micro-Manager is already streaming: exposure_ms=%s is not applied; "
                            "keeping the live exposure of %s ms", exposure_ms, core.get_exposure())
            else:
                core.set_exposure(float(exposure_ms))
        self._shape = (int(core.get_image_height()), int(core.get_image_width()))
        bits = int(core.get_image_bit_depth()) if hasattr(core, "get_image_bit_depth") else 0
        self._dtype = _dtype_for(int(core.get_bytes_per_pixel()))
        self.bit_depth = bits or 8 * self._dtype.itemsize
        self.exposure_ms = float(core.get_exposure())
        self.missed = 0
        self._last_number: int | None = None
        self._clock_offset_ns: int | None = None
        if self.following:
            log.info("following Micro-Manager's running live stream (%s)", self.camera)
        self._started = False  # our own acquisition starts at the first read (after any warm-up)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def read(self) -> Frame:
        if self._closed:
            raise RuntimeError("MicroManagerSource is closed")
        core = self.core
        if not self.following and not self._started:
            # Micro-Manager counts ElapsedTime-ms from the start of the sequence: this host's clock just before
            # it starts anchors every capture time, however late the frames are read
            self._clock_offset_ns = time.time_ns()
            core.start_continuous_sequence_acquisition(0.0)
            self._started = True
        deadline = time.monotonic() + self.timeout_s
        while core.get_remaining_image_count() == 0:
            if not core.is_sequence_running() and core.get_remaining_image_count() == 0:
                raise EndOfStream("Micro-Manager's sequence acquisition stopped")
            if time.monotonic() > deadline:
                raise FrameTimeout(f"no frame from Micro-Manager camera {self.camera!r} within {self.timeout_s:g} s "
                                   f"(exposure {self.exposure_ms:g} ms)")
            time.sleep(self.poll_interval_s)
        tagged = core.pop_next_tagged_image()
        pixels, meta = normalize_tagged_image(tagged.pix, tagged.tags, self._dtype)
        number = meta.get("ImageNumber")
        if isinstance(number, int):
            if self._last_number is not None and number > self._last_number + 1:
                gap = number - self._last_number - 1
                self.missed += gap
                log.warning("Micro-Manager overwrote %d frame(s) before they were read (image %d after %d)",
                            gap, number, self._last_number)
            self._last_number = number
        frame = Frame(pixels, number if isinstance(number, int) else self._index, self._capture_ns(meta), meta)
        self._index += 1
        return frame

    def _capture_ns(self, meta: dict[str, Any]) -> int:
        """When the frame was taken, on this host's clock: Micro-Manager's ``ElapsedTime-ms`` from the sequence's
        start, so time a frame waited in the circular buffer counts in latencies (without the tag: now).

        The start is the moment this source started the acquisition; following a stream someone else started, it
        is estimated as the earliest ``now - elapsed`` seen so far (the frame read soonest after its capture), which
        also corrects a camera whose zero came before our start: a capture time is never later than its read."""
        now = time.time_ns()
        elapsed = meta.get("ElapsedTime-ms")
        if not isinstance(elapsed, float):
            return now
        elapsed_ns = int(elapsed * 1e6)
        if self._clock_offset_ns is None or now - elapsed_ns < self._clock_offset_ns:
            self._clock_offset_ns = now - elapsed_ns
        return self._clock_offset_ns + elapsed_ns

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            try:
                self.core.stop_sequence_acquisition()
            except Exception as exc:  # the core may already be gone
                log.debug("stopping the sequence: %s", exc)
        # drop the reference: an in-process core must be released before the interpreter exits
        self.core = None
