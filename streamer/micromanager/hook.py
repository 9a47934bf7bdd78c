"""A pycromanager image-processor hook that denoises each acquired image through ``n2n serve``.

    from pycromanager import Acquisition, multi_d_acquisition_events
    from streamer.micromanager import denoise_hook

    hook = denoise_hook()                      # the server's default request address
    with Acquisition(directory="data", name="cells", image_process_fn=hook) as acq:
        acq.acquire(multi_d_acquisition_events(num_time_points=50))
    hook.close()

The hook sends the image to the server's request/reply socket and returns one
``(image, metadata)`` tuple of the input's dtype (what both pycromanager backends require).
If the server does not answer in time or refuses the frame, the raw image is returned with
``n2n-denoised: false`` and the reason in its metadata (the acquisition is never lost or
aborted), and ``hook.errors`` counts it. ``keep_raw="raw.ome.tif"`` also saves every raw image.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..client import ServerError, StreamClient
from ..pipeline import to_dtype
from ..sources import OmeTiffWriter

__all__ = ["DenoiseHook", "denoise_hook"]

log = logging.getLogger("n2n.micromanager")


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
        self.last_error: str | None = None
        self._client: StreamClient | None = None
        self._raw: OmeTiffWriter | None = None
        self._lock = threading.Lock()

    def _request(self, image: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        if self._client is None:
            self._client = StreamClient(self.endpoints, timeout=self.timeout_s)
        return self._client.request(image, meta=meta, timeout=self.timeout_s).pixels

    def __call__(self, image: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        with self._lock:  # pycromanager calls from one thread; be safe if a user shares the hook
            self.frames += 1
            meta = dict(metadata) if metadata is not None else {}
            image = np.asarray(image)
            if self.keep_raw is not None:
                try:
                    if self._raw is None:
                        self._raw = OmeTiffWriter(self.keep_raw, image.shape[-2:], image.dtype, name="raw")
                    self._raw.write(image.reshape(image.shape[-2:]), _plain(meta))
                except (OSError, ValueError) as exc:  # disk full, a new ROI size: never abort the acquisition
                    self.raw_errors += 1
                    if self.raw_errors <= 10:
                        log.warning("raw frame %d not saved to %s: %s", self.frames, self.keep_raw, exc)
                    meta["n2n-raw-saved"] = False
            small: dict[str, Any] = {k: meta[k] for k in ("ImageNumber", "Axes", "Camera") if k in meta}
            t0 = time.perf_counter()
            try:
                out = self._request(image.reshape(image.shape[-2:]), _plain(small))
            except (TimeoutError, ServerError, OSError) as exc:
                self.errors += 1
                self.last_error = str(exc)
                if self.errors <= 10 or self.errors % 100 == 0:
                    log.warning("frame %d not denoised (kept raw): %s", self.frames, exc)
                if isinstance(exc, TimeoutError) and self._client is not None:
                    self._client.close()  # a fresh socket for the next frame
                    self._client = None
                meta.update({"n2n-denoised": False, "n2n-error": str(exc)})
                return image, meta
            out = to_dtype(out, image.dtype)  # a server set to float32 output: back to the camera's type
            self.denoised += 1
            meta.update({"n2n-denoised": True, "n2n-latency-ms": round((time.perf_counter() - t0) * 1000, 3)})
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
