"""A pycromanager image-processor hook that denoises each acquired image through ``n2n serve``.

    from pycromanager import Acquisition, multi_d_acquisition_events
    from streamer.micromanager import denoise_hook

    hook = denoise_hook()                      # the server's default request address
    with Acquisition(directory="data", name="cells", image_process_fn=hook) as acq:
        acq.acquire(multi_d_acquisition_events(num_time_points=50))
    hook.close()

The hook sends the image to the server's request/reply socket and returns one
``(image, metadata)`` tuple of the input's dtype (what both pycromanager backends require).
Whatever happens it never raises (an exception would abort the acquisition): if the server does not
answer in time or refuses the frame, or the image is not one the server takes (RGB, a dtype outside the
wire protocol's), the raw image is returned with ``n2n-denoised: false`` and the reason in its metadata,
and ``hook.errors`` counts it. After a server that did not answer, the hook stops waiting on every frame:
frames are kept raw at once (``hook.skipped``) until a retry, after 1 s, then 2, 4, … up to 30 s between
tries, and the first answer ends it. The metadata stays small however long the server is down: ``n2n-error`` is
the reason (the first failure's, at most :data:`MAX_REASON` characters) and ``n2n-errors`` the count so far.
``keep_raw="raw.ome.tif"`` also saves every raw image, exactly or not at all: an image whose pixels the file
cannot hold as they are (another dtype than the file's first image, values that would wrap or round, NaN into
integers) is not saved, ``hook.raw_refused`` counts it and its metadata says ``n2n-raw-saved: false`` and
``n2n-raw-error`` (why); a saved one says ``n2n-raw-saved: true``.

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

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..client import ServerError, StreamClient
from ..core.dtypes import to_dtype
from ..core.streams import key_text, stream_key
from ..denoiser import FLAG_FLOAT_PATH, is_raw
from ..protocol import DTYPES
from ..sources import OmeTiffWriter

__all__ = ["DenoiseHook", "denoise_hook", "stream_key"]

log = logging.getLogger("n2n.micromanager")

_MAX_BACKOFF_S = 30.0
MAX_REASON = 300
"""Characters of a reason kept in ``n2n-error`` / ``n2n-raw-error`` (a server's message could be longer)."""


def _short(reason: str) -> str:
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


def lossless_problem(image: np.ndarray, dtype: np.dtype) -> str | None:
    """Why ``image`` cannot be stored as ``dtype`` exactly (None: it can): NaN or infinity into integers,
    values outside the type's range, fractions into integers, precision a narrower float loses."""
    dtype = np.dtype(dtype)
    if image.dtype == dtype:
        return None
    if image.dtype.kind not in "biuf" or dtype.kind not in "biuf":
        return f"expected {dtype} pixels (the file's), got {image.dtype}, which it cannot hold"
    if image.dtype.kind == "f" and dtype.kind in "biu":
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            return f"{bad} NaN/infinite pixel(s) cannot be stored as {dtype}"
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = (image.min(), image.max()) if image.size else (0, 0)
        if low < info.min or high > info.max:
            return (f"{image.dtype} values {low}..{high} do not fit {dtype} ({info.min}..{info.max}): they would "
                    "wrap or clip")
    with np.errstate(all="ignore"):
        back = image.astype(dtype).astype(image.dtype)
    if not np.array_equal(back, image, equal_nan=image.dtype.kind == "f"):
        return f"{image.dtype} values would change stored as {dtype} (fractions or precision lost)"
    return None


class DenoiseHook:
    """Callable ``(image, metadata) -> (denoised image, metadata)`` for ``image_process_fn``."""

    def __init__(self, endpoints: dict[str, str] | str | None = None, timeout_s: float = 5.0,
                 keep_raw: str | Path | None = None) -> None:
        if isinstance(endpoints, str):
            endpoints = {"request": endpoints}
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self.keep_raw = Path(keep_raw) if keep_raw is not None else None
        self.frames = 0
        self.denoised = 0
        self.errors = 0
        self.raw_errors = 0  # raw frames that could not be saved (keep_raw): a write failed, or refused below
        self.raw_refused = 0  # raw frames not saved because the file could not hold them exactly (keep_raw)
        self.raw_saved = 0
        self.skipped = 0  # kept raw without asking: the server was down and the next try not due yet
        self.served_raw = 0  # the server sent the raw image back: the denoised one failed its checks
        self.float_path = 0  # denoised by the float32 model (out of the reduced precision's checked range)
        self.last_error: str | None = None
        self._down: str | None = None  # why the server is taken as down (the failure that started the backoff)
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._client: StreamClient | None = None
        self._raw: OmeTiffWriter | None = None
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

    def __call__(self, image: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        with self._lock:  # pycromanager calls from one thread; be safe if a user shares the hook
            self.frames += 1
            meta = dict(metadata) if isinstance(metadata, dict) else {}
            try:
                return self._denoise(np.asarray(image), meta)
            except Exception as exc:  # anything unforeseen: the acquisition goes on with the raw image
                return self._kept_raw(image, meta, f"{type(exc).__name__}: {exc}")

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
        try:
            if self._raw is None:
                if image.dtype.kind not in "biuf" or image.ndim != 2:
                    raise ValueError(f"expected a 2-D image of integer or float pixels, got {image.dtype} "
                                     f"of shape {image.shape}")
                self._raw = OmeTiffWriter(self.keep_raw, image.shape, image.dtype, name="raw")  # type: ignore[arg-type]
            problem = lossless_problem(image, self._raw.dtype)
            if problem is not None:
                self.raw_refused += 1
                raise ValueError(f"not saved exactly in {self.keep_raw}: {problem}")
            self._raw.write(image.astype(self._raw.dtype, copy=False), _plain(meta))
        except (OSError, ValueError) as exc:  # disk full, a new ROI size, pixels it cannot hold
            self.raw_errors += 1
            if self.raw_errors <= 10 or self.raw_errors % 1000 == 0:
                log.warning("raw frame %d not saved to %s: %s", self.frames, self.keep_raw, exc)
            meta.update({"n2n-raw-saved": False, "n2n-raw-error": _short(str(exc))})
            return
        self.raw_saved += 1
        meta["n2n-raw-saved"] = True

    def counts(self) -> dict[str, int]:
        """What became of the frames so far (for a summary after the acquisition)."""
        return {"frames": self.frames, "denoised": self.denoised, "errors": self.errors, "skipped": self.skipped,
                "served_raw": self.served_raw, "float_path": self.float_path, "raw_saved": self.raw_saved,
                "raw_errors": self.raw_errors, "raw_refused": self.raw_refused}

    def close(self) -> None:
        """Close the socket and finish the raw file (call after the acquisition)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._raw is not None:
                self._raw.close()
                self._raw = None

    def __enter__(self) -> DenoiseHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of pycromanager metadata (numbers, text, lists, dicts)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
        elif isinstance(v, dict):
            out[str(k)] = _plain(v)
        elif isinstance(v, (list, tuple)):
            out[str(k)] = [x if isinstance(x, (str, int, float, bool)) else str(x) for x in v]
        else:
            out[str(k)] = str(v)
    return out


MAX_STREAMS = 100_000
"""Streams (places) whose frame count the hook keeps."""


def denoise_hook(endpoints: dict[str, str] | str | None = None, timeout_s: float = 5.0,
                 keep_raw: str | Path | None = None) -> DenoiseHook:
    """A hook for ``pycromanager.Acquisition(..., image_process_fn=hook)``: see :class:`DenoiseHook`.

    ``endpoints``: the server's addresses (its ready file's ``endpoints``, or the request address
    as a string); None uses the default ``tcp://127.0.0.1:5557``."""
    return DenoiseHook(endpoints, timeout_s, keep_raw)
