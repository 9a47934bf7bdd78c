"""A pycromanager image-processor hook that denoises each acquired image through ``n2n serve``.

    from pycromanager import Acquisition, multi_d_acquisition_events
    from streamer.micromanager import denoise_hook

    with denoise_hook(keep_raw="data/cells_raw") as hook:   # the server's default request address
        with Acquisition(directory="data", name="cells", image_process_fn=hook) as acq:
            acq.acquire(multi_d_acquisition_events(num_time_points=50, channel_group="Channel",
                                                   channels=["DAPI", "GFP"]))

The hook sends the image to the server's request/reply socket and returns one
``(image, metadata)`` tuple of the input's dtype (what both pycromanager backends require).
Whatever happens it never raises (an exception would abort the acquisition): if the server does not
answer in time or refuses the frame, or the image is not one the server takes (RGB, a dtype outside the
wire protocol's), the raw image is returned with ``n2n-denoised: false`` and the reason in its metadata,
and ``hook.errors`` counts it. After a server that did not answer, the hook stops waiting on every frame:
frames are kept raw at once (``hook.skipped``) until a retry, after 1 s, then 2, 4, … up to 30 s between
tries, and the first answer ends it. The metadata stays small however long the server is down: ``n2n-error`` is
the reason (the first failure's, at most :data:`MAX_REASON` characters) and ``n2n-errors`` the count so far.
``keep_raw=`` also saves every raw image, exactly or not at all, where it was acquired (:mod:`.rawrecord`): a folder
(``keep_raw="data/raw"``) gets an NDTiff dataset with the acquisition's axes (time, channel, z, position, …), each
image at its ``Axes`` with its metadata; a ``.ome.tif`` file gets a time series (TYX) and refuses an image whose
other axes (channel, z, …) are not the first image's rather than flatten it. A path that holds a record already
(a file, a folder with files) is refused when the hook is made. A record holds one image size: the first image of
another size (a new ROI mid-acquisition) begins a record of the same form beside it for that size
(``data/cells_raw_2``, ``raw_2.ome.tif``: the next free name, never over a file or folder there), said in one line,
and every later image goes to its size's record; :attr:`DenoiseHook.raw_records` lists them. An image the record
cannot hold as it is (another dtype than the record's first image, values that would wrap or round, NaN into
integers, an axis it cannot keep, a place or time point saved already, in any of its records) is not saved,
``hook.raw_refused`` counts it and its metadata says
``n2n-raw-saved: false`` and ``n2n-raw-error`` (why); a saved one says ``n2n-raw-saved: true``; the first raw image
not saved, whatever the reason, is logged as an error. The record is finished by :meth:`DenoiseHook.close` (or the
``with`` block's end, or the interpreter's exit); what a crash leaves of each form: :mod:`.rawrecord`.

``image_process_fn=hook.with_raw`` returns both images of each acquired one, the denoised image and the raw one under
a channel of its own (``"DAPI raw"``; an acquisition without channels gets the channels ``denoised`` and ``raw``), so
the acquisition's dataset holds both: pycromanager's Java backend (Micro-Manager running) takes such a list; its
Python backend takes one image per image, so there the hook returns the denoised image alone and says so in its
metadata (``n2n-raw-emitted: false``); ``keep_raw`` keeps the raw images with either backend. Which backend is
decided at each call from the acquisition calling the hook, so one process may run both, one after the other.

The server's checks travel with its reply (the header's ``flags``, see :mod:`streamer.protocol`): an image the
server sent back RAW because the denoised output failed a check gets ``n2n-denoised: false`` and ``n2n-flag``
(the reason, e.g. ``raw:output_range``; ``hook.served_raw`` counts them), and one denoised by the float32 model
because it left the range the reduced precision was checked on gets ``n2n-precision-fallback: true``
(``hook.float_path`` counts them). Every flag is also listed in ``n2n-flags``.

For a K-frame model each image is denoised with the images before it *from the same place*: the hook sends its
``Axes`` without time (channel, z, position, …) as the frame's stream (:func:`streamer.core.streams.stream_key`),
so a 2-channel or z-stack acquisition keeps one history per channel and plane, never mixed. The ``Axes``' channel
also goes as ``meta.channel``: a server of a model set (``n2n serve --model DAPI=runs/dapi --model GFP=runs/gfp``)
denoises each image with its channel's model, and sends an image of a channel it has no model for back raw
(``n2n-denoised: false``, ``n2n-flag: raw:no_model``).
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
import time
import weakref
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from ..client import ServerError, StreamClient
from ..core.dtypes import to_dtype
from ..core.streams import key_text, stream_key
from ..denoiser import FLAG_FLOAT_PATH, is_raw
from ..protocol import DTYPES
from .rawrecord import RawRecord, RawRefused, lossless_problem, open_record
from .rawrecord import plain_metadata as _plain

__all__ = ["RAW_CHANNEL_SUFFIX", "DenoiseHook", "denoise_hook", "lossless_problem", "stream_key"]

log = logging.getLogger("n2n.micromanager")

_MAX_BACKOFF_S = 30.0
MAX_REASON = 300
"""Characters of a reason kept in ``n2n-error`` / ``n2n-raw-error`` (a server's message could be longer)."""


def _short(reason: str) -> str:
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


RAW_CHANNEL_SUFFIX = " raw"
"""What :meth:`DenoiseHook.with_raw` appends to a channel's name for its raw images (``"DAPI raw"``)."""
_PY_BACKEND_MODULE = "pycromanager.acquisition.python_backend_acquisitions"
_PY_BACKEND = ("pycromanager's Python backend takes one (image, metadata) per image: the raw image is not emitted "
               "(the Java backend takes both); keep_raw keeps the raw images")
_CALLER_DEPTH = 16
"""Frames above :meth:`DenoiseHook.with_raw` searched for the pycromanager acquisition calling it."""


def _called_by_python_backend() -> bool:
    """Whether the caller is a pycromanager acquisition of the Python backend, decided per call from the acquisition
    itself: pycromanager 1.0.2 calls an image processor through its acquisition's ``_call_image_process_fn`` (from
    its ``ImageProcessor`` thread under the Python backend), so the frames above hold the acquisition object, a
    ``PythonBackendAcquisition`` or a ``JavaBackendAcquisition``. Anything else (no pycromanager frame within
    :data:`_CALLER_DEPTH`: a script calling the hook itself) is not the Python backend. (pycromanager's process-wide
    ``Engine.singleton`` is not used: it outlives the Python backend, ``stop_headless`` leaves it set.)"""
    module = sys.modules.get(_PY_BACKEND_MODULE)
    if module is None:  # never imported: no Python-backend acquisition in this process
        return False
    python_side = (module.PythonBackendAcquisition, module.ImageProcessor)
    frame: FrameType | None = sys._getframe(2)  # the caller of with_raw
    for _ in range(_CALLER_DEPTH):
        if frame is None:
            return False
        if "pycromanager" in frame.f_code.co_filename:
            owner = frame.f_locals.get("self")
            if owner is not None and type(owner).__module__.startswith("pycromanager."):
                return isinstance(owner, python_side)
        frame = frame.f_back
    return False

Processed = tuple[np.ndarray, dict[str, Any]]


class DenoiseHook:
    """Callable ``(image, metadata) -> (denoised image, metadata)`` for ``image_process_fn``; :meth:`with_raw`
    returns the raw image too."""

    def __init__(self, endpoints: dict[str, str] | str | None = None, timeout_s: float = 5.0,
                 keep_raw: str | Path | None = None) -> None:
        if isinstance(endpoints, str):
            endpoints = {"request": endpoints}
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self.keep_raw = Path(keep_raw) if keep_raw is not None else None
        self._raw: RawRecord | None = open_record(self.keep_raw) if self.keep_raw is not None else None
        # finished at the interpreter's exit (or when the hook is collected) if close() is never called
        self._finish_raw = weakref.finalize(self, self._raw.close) if self._raw is not None else None
        self.frames = 0
        self.denoised = 0
        self.errors = 0
        self.raw_errors = 0  # raw frames that could not be saved (keep_raw): a write failed, or refused below
        self.raw_refused = 0  # raw frames not saved because the file could not hold them exactly (keep_raw)
        self.raw_saved = 0
        self.skipped = 0  # kept raw without asking: the server was down and the next try not due yet
        self.served_raw = 0  # the server sent the raw image back: the denoised one failed its checks
        self.float_path = 0  # denoised by the float32 model (out of the reduced precision's checked range)
        self.raw_emitted = 0  # raw images returned beside the denoised ones (with_raw)
        self.raw_not_emitted = 0  # with_raw under pycromanager's Python backend: the denoised image alone
        self.last_error: str | None = None
        self._down: str | None = None  # why the server is taken as down (the failure that started the backoff)
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._client: StreamClient | None = None
        self._lock = threading.Lock()
        self._seqs: dict[str, int] = {}  # frames sent per stream (stream_key)

    def _next_seq(self, where: dict[str, Any] | None) -> int:
        """The frame's number in its stream (the server resets a history at a gap in it)."""
        key = key_text(where)
        if len(self._seqs) >= MAX_STREAMS and key not in self._seqs:
            self._seqs.clear()  # (a session of more places than this: their histories start again)
        seq = self._seqs.get(key, 0)
        self._seqs[key] = seq + 1
        return seq

    def _request(self, image: np.ndarray, meta: dict[str, Any], seq: int | None = None) -> tuple[np.ndarray,
                                                                                                list[str]]:
        """The server's pixels for ``image`` and the flags its checks gave them."""
        if self._client is None:
            self._client = StreamClient(self.endpoints, timeout=self.timeout_s)
        result = self._client.request(image, meta=meta, seq=seq, timeout=self.timeout_s)
        flags = result.header.get("flags")
        return result.pixels, [str(f) for f in flags] if isinstance(flags, list) else []

    def __call__(self, image: np.ndarray, metadata: dict[str, Any]) -> Processed:
        with self._lock:  # pycromanager calls from one thread; be safe if a user shares the hook
            return self._process(image, metadata)

    def _process(self, image: np.ndarray, metadata: dict[str, Any]) -> Processed:
        self.frames += 1
        meta = dict(metadata) if isinstance(metadata, dict) else {}
        try:
            return self._denoise(np.asarray(image), meta)
        except Exception as exc:  # anything unforeseen: the acquisition goes on with the raw image
            return self._kept_raw(image, meta, f"{type(exc).__name__}: {exc}")

    def with_raw(self, image: np.ndarray, metadata: dict[str, Any]) -> list[Processed] | Processed:
        """``image_process_fn=hook.with_raw``: ``[(denoised, metadata), (raw, metadata)]``, the raw image under its
        channel's name and :data:`RAW_CHANNEL_SUFFIX` (``Axes`` and ``Channel``: what pycromanager stores it by);
        without a channel axis the two become channels ``denoised`` and ``raw``. The raw image is the one given,
        its metadata a copy of the given one with ``n2n-raw-copy: true``. Called by an acquisition of pycromanager's
        Python backend (which takes one image per image), the denoised image alone, marked ``n2n-raw-emitted:
        false``; the backend is the calling acquisition's, found at each call (:func:`_called_by_python_backend`)."""
        with self._lock:
            out, meta = self._process(image, metadata)
            try:
                if _called_by_python_backend():
                    self.raw_not_emitted += 1
                    if self.raw_not_emitted == 1:
                        log.warning("with_raw: %s", _PY_BACKEND)
                    meta.update({"n2n-raw-emitted": False, "n2n-raw-emit-error": _PY_BACKEND})
                    return out, meta
                given = metadata if isinstance(metadata, dict) else {}
                given_axes = given.get("Axes")
                axes: dict[str, Any] = given_axes if isinstance(given_axes, dict) else {}
                channel = axes.get("channel")
                name = "denoised" if channel is None else str(channel)
                raw_name = "raw" if channel is None else name + RAW_CHANNEL_SUFFIX
                meta["Axes"] = {**axes, "channel": name}
                if channel is None:
                    meta["Channel"] = name
                raw_meta = copy.deepcopy(given)
                raw_meta.update({"Axes": {**axes, "channel": raw_name}, "Channel": raw_name, "n2n-denoised": False,
                                 "n2n-raw-copy": True})
                self.raw_emitted += 1
                return [(out, meta), (image, raw_meta)]
            except Exception as exc:  # never abort the acquisition: the denoised image alone, and why
                meta.update({"n2n-raw-emitted": False, "n2n-raw-emit-error": _short(f"{type(exc).__name__}: {exc}")})
                return out, meta

    def _kept_raw(self, image: Any, meta: dict[str, Any], reason: str, skipped: bool = False) -> tuple[Any, dict]:
        self.errors += 1
        self.skipped += skipped
        reason = _short(reason)
        self.last_error = reason
        if not skipped and (self.errors <= 10 or self.errors % 100 == 0):
            log.warning("frame %d not denoised (kept raw): %s", self.frames, reason)
        meta.update({"n2n-denoised": False, "n2n-error": reason, "n2n-errors": self.errors})
        return image, meta

    def _denoise(self, image: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        squeezed = image.reshape([n for n in image.shape if n != 1] or [1]) if image.ndim > 2 else image
        if self.keep_raw is not None:  # every frame, whatever comes of it
            self._save_raw(squeezed, meta)
        if squeezed.ndim != 2:
            return self._kept_raw(image, meta, f"expected a single-channel 2-D image, got shape {image.shape} "
                                               "(RGB or several channels are not denoised)")
        if image.dtype.name not in DTYPES:
            return self._kept_raw(image, meta, f"expected pixels of one of {', '.join(DTYPES)}, got {image.dtype}")
        where = stream_key(meta.get("Axes"))
        seq = self._next_seq(where)  # counted whether or not the server sees it: a frame it missed is a gap
        now = time.monotonic()
        if now < self._retry_at:  # the reason stays the one failure's: never the last reason wrapped again
            return self._kept_raw(image, meta, f"server unavailable: {self._down}", skipped=True)
        small: dict[str, Any] = {k: meta[k] for k in ("ImageNumber", "Axes", "Camera") if k in meta}
        if where is not None:  # a K-frame model's history per channel, position and z-plane, never mixed
            small["stream"] = where
            if where.get("channel") is not None:  # routes the image to its channel's model (a model set)
                small["channel"] = str(where["channel"])
        t0 = time.perf_counter()
        try:
            out, flags = self._request(squeezed, _plain(small), seq)
        except ServerError as exc:  # the server answered: it is up, this frame was refused
            return self._kept_raw(image, meta, str(exc))
        except (TimeoutError, OSError) as exc:  # no answer: back off before waiting on the server again
            if self._client is not None:
                self._client.close()  # a fresh socket for the next try
                self._client = None
            self._backoff_s = min(_MAX_BACKOFF_S, max(1.0, 2 * self._backoff_s))
            self._retry_at = time.monotonic() + self._backoff_s
            self._down = _short(str(exc))
            return self._kept_raw(image, meta, str(exc))
        self._backoff_s = 0.0
        self._down = None
        out = to_dtype(out, image.dtype)  # a server set to float32 output: back to the camera's type
        meta["n2n-latency-ms"] = round((time.perf_counter() - t0) * 1000, 3)
        if flags:
            meta["n2n-flags"] = flags
        if FLAG_FLOAT_PATH in flags:
            self.float_path += 1
            meta["n2n-precision-fallback"] = True
        if is_raw(flags):  # the server answered with the raw image: say so, never pass it off as denoised
            self.served_raw += 1
            meta.update({"n2n-denoised": False, "n2n-flag": ",".join(f for f in flags if f.startswith("raw:"))})
            if self.served_raw <= 10 or self.served_raw % 100 == 0:
                log.warning("frame %d kept raw by the server (%s)", self.frames, meta["n2n-flag"])
        else:
            self.denoised += 1
            meta["n2n-denoised"] = True
        return out.reshape(image.shape), meta

    def _save_raw(self, image: np.ndarray, meta: dict[str, Any]) -> None:
        """Save the raw image (keep_raw) exactly, or not at all and say why; never abort the acquisition."""
        assert self._raw is not None
        try:
            self._raw.save(image, meta)
        except Exception as exc:  # disk full, pixels or axes it cannot hold, a writer's own failure
            self.raw_errors += 1
            self.raw_refused += isinstance(exc, RawRefused)
            reason = str(exc) if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__}: {exc}"
            if self.raw_errors == 1:  # the first raw image lost: said loudly, once (the acquisition goes on)
                log.error("raw frame %d not saved to %s: %s (hook.raw_errors counts the raw frames not saved; "
                          "n2n-raw-error says why in each one's metadata)", self.frames, self.keep_raw, reason)
            elif self.raw_errors <= 10 or self.raw_errors % 1000 == 0:
                log.warning("raw frame %d not saved to %s: %s", self.frames, self.keep_raw, reason)
            meta.update({"n2n-raw-saved": False, "n2n-raw-error": _short(reason)})
            return
        self.raw_saved += 1
        meta["n2n-raw-saved"] = True

    @property
    def raw_records(self) -> list[str]:
        """Where the raw images went (``keep_raw``), in order: the record, then one beside it per change of image
        size (a new ROI); empty without ``keep_raw`` or before the first image."""
        return [str(p) for p in self._raw.paths] if self._raw is not None else []

    def counts(self) -> dict[str, int]:
        """What became of the frames so far (for a summary after the acquisition)."""
        return {"frames": self.frames, "denoised": self.denoised, "errors": self.errors, "skipped": self.skipped,
                "served_raw": self.served_raw, "float_path": self.float_path, "raw_saved": self.raw_saved,
                "raw_errors": self.raw_errors, "raw_refused": self.raw_refused, "raw_emitted": self.raw_emitted,
                "raw_not_emitted": self.raw_not_emitted, "raw_records": len(self.raw_records)}

    def close(self) -> None:
        """Close the socket and finish the raw record (call after the acquisition; images given after are not
        saved: a new hook keeps a new record)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._finish_raw is not None:
                self._finish_raw()  # (the record's close, once)

    def __enter__(self) -> DenoiseHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_STREAMS = 100_000
"""Streams (places) whose frame count the hook keeps."""


def denoise_hook(endpoints: dict[str, str] | str | None = None, timeout_s: float = 5.0,
                 keep_raw: str | Path | None = None) -> DenoiseHook:
    """A hook for ``pycromanager.Acquisition(..., image_process_fn=hook)``: see :class:`DenoiseHook`.

    ``endpoints``: the server's addresses (its ready file's ``endpoints``, or the request address
    as a string); None uses the default ``tcp://127.0.0.1:5557``. ``keep_raw``: a folder for an NDTiff dataset of the
    raw images at the acquisition's axes, or a ``.ome.tif`` file for a time series (see :mod:`.rawrecord`); a folder
    that holds files already is refused here (``ValueError``), before the acquisition starts."""
    return DenoiseHook(endpoints, timeout_s, keep_raw)
