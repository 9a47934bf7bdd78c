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
tries, and the first answer ends it. ``keep_raw="raw.ome.tif"`` also saves every raw image.

The server's checks travel with its reply (the header's ``flags``, see :mod:`streamer.protocol`): an image the
server sent back RAW because the denoised output failed a check gets ``n2n-denoised: false`` and ``n2n-flag``
(the reason, e.g. ``raw:output_range``; ``hook.served_raw`` counts them), and one denoised by the float32 model
because it left the range the reduced precision was checked on gets ``n2n-precision-fallback: true``
(``hook.float_path`` counts them). Every flag is also listed in ``n2n-flags``.
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
from ..denoiser import FLAG_FLOAT_PATH, is_raw
from ..protocol import DTYPES
from ..sources import OmeTiffWriter

__all__ = ["DenoiseHook", "denoise_hook"]

log = logging.getLogger("n2n.micromanager")

_MAX_BACKOFF_S = 30.0


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
        self.raw_errors = 0  # raw frames that could not be saved (keep_raw)
        self.skipped = 0  # kept raw without asking: the server was down and the next try not due yet
        self.served_raw = 0  # the server sent the raw image back: the denoised one failed its checks
        self.float_path = 0  # denoised by the float32 model (out of the reduced precision's checked range)
        self.last_error: str | None = None
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._client: StreamClient | None = None
        self._raw: OmeTiffWriter | None = None
        self._lock = threading.Lock()

    def _request(self, image: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
        """The server's pixels for ``image`` and the flags its checks gave them."""
        if self._client is None:
            self._client = StreamClient(self.endpoints, timeout=self.timeout_s)
        result = self._client.request(image, meta=meta, timeout=self.timeout_s)
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
        self.last_error = reason
        if not skipped and (self.errors <= 10 or self.errors % 100 == 0):
            log.warning("frame %d not denoised (kept raw): %s", self.frames, reason)
        meta.update({"n2n-denoised": False, "n2n-error": reason})
        return image, meta

    def _denoise(self, image: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        squeezed = image.reshape([n for n in image.shape if n != 1] or [1]) if image.ndim > 2 else image
        if self.keep_raw is not None:  # every frame, whatever comes of it
            try:
                if self._raw is None:
                    self._raw = OmeTiffWriter(self.keep_raw, squeezed.shape, image.dtype, name="raw")
                self._raw.write(squeezed, _plain(meta))
            except (OSError, ValueError) as exc:  # disk full, a new ROI size: never abort the acquisition
                self.raw_errors += 1
                if self.raw_errors <= 10:
                    log.warning("raw frame %d not saved to %s: %s", self.frames, self.keep_raw, exc)
                meta["n2n-raw-saved"] = False
        if squeezed.ndim != 2:
            return self._kept_raw(image, meta, f"expected a single-channel 2-D image, got shape {image.shape} "
                                               "(RGB or several channels are not denoised)")
        if image.dtype.name not in DTYPES:
            return self._kept_raw(image, meta, f"expected pixels of one of {', '.join(DTYPES)}, got {image.dtype}")
        now = time.monotonic()
        if now < self._retry_at:
            return self._kept_raw(image, meta, f"server unavailable ({self.last_error}); next try in "
                                               f"{self._retry_at - now:.1f} s", skipped=True)
        small: dict[str, Any] = {k: meta[k] for k in ("ImageNumber", "Axes", "Camera") if k in meta}
        t0 = time.perf_counter()
        try:
            out, flags = self._request(squeezed, _plain(small))
        except ServerError as exc:  # the server answered: it is up, this frame was refused
            return self._kept_raw(image, meta, str(exc))
        except (TimeoutError, OSError) as exc:  # no answer: back off before waiting on the server again
            if self._client is not None:
                self._client.close()  # a fresh socket for the next try
                self._client = None
            self._backoff_s = min(_MAX_BACKOFF_S, max(1.0, 2 * self._backoff_s))
            self._retry_at = time.monotonic() + self._backoff_s
            return self._kept_raw(image, meta, str(exc))
        self._backoff_s = 0.0
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


def denoise_hook(endpoints: dict[str, str] | str | None = None, timeout_s: float = 5.0,
                 keep_raw: str | Path | None = None) -> DenoiseHook:
    """A hook for ``pycromanager.Acquisition(..., image_process_fn=hook)``: see :class:`DenoiseHook`.

    ``endpoints``: the server's addresses (its ready file's ``endpoints``, or the request address
    as a string); None uses the default ``tcp://127.0.0.1:5557``."""
    return DenoiseHook(endpoints, timeout_s, keep_raw)
