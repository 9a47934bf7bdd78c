"""Watch a running server: the newest raw | denoised pair of frames, for viewers (``n2n view``, the napari widget).

The server's view socket sends each frame's raw and denoised pixels in one message, only while a viewer
subscribes, and never waits for one (at most two messages queue per viewer). :class:`ViewFeed` takes what
has arrived whenever the viewer is ready to draw and keeps the newest: a viewer slower than the camera skips
frames, and neither the server nor the camera notices. No Qt here: napari and the tests use the same feed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from .client import StatsSubscriber
from .core.messages import FrameHeader, StatsMessage, decode_pixels
from .core.summary import RateMeter, summary
from .protocol import TOPIC_VIEW, decode_header
from .security import ClientKeys

__all__ = ["ViewFeed", "ViewFrame"]

_RCVHWM = 2  # messages this side queues: with the server's two, a stalled viewer holds four frames at most
_SOCKET_BUFFER = 256 * 1024  # bytes: the kernel's receive buffer


@dataclass
class ViewFrame:
    """One frame as the server saw it (``raw``) and sent it (``denoised``), with the denoised frame's header."""

    raw: np.ndarray
    denoised: np.ndarray
    header: FrameHeader
    received_ns: int = field(default_factory=time.time_ns)

    @property
    def seq(self) -> int | None:
        seq = self.header.get("seq")
        return seq if isinstance(seq, int) else None

    def latency_ms(self, now_ns: int | None = None) -> float | None:
        """Capture (the producer's ``ts_ns``) to ``now_ns`` (default: now), when the clocks agree (one host)."""
        ts = self.header.get("ts_ns")
        dt = (time.time_ns() if now_ns is None else now_ns) - ts if isinstance(ts, int) else -1
        return dt * 1e-6 if 0 <= dt < 3_600 * 10**9 else None


def _pixels(buf: Any, spec: Any, what: str) -> np.ndarray:
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list) or not isinstance(spec.get("dtype"), str):
        raise ValueError(f"expected the {what} frame's shape and dtype in the header, got {spec!r}")
    return decode_pixels(buf, spec["shape"], spec["dtype"])


def decode_view(parts: list[Any]) -> ViewFrame:
    """``[b"view", header, raw, denoised]`` → :class:`ViewFrame` (the pixels are read-only views, no copy)."""
    if len(parts) != 4 or bytes(parts[0]) != TOPIC_VIEW:
        raise ValueError(f"expected 4 parts (topic 'view', header, raw, denoised), got {len(parts)}")
    header = decode_header(parts[1])
    buffers = [p.buffer if hasattr(p, "buffer") else p for p in parts[2:]]
    return ViewFrame(_pixels(buffers[0], header.get("raw"), "raw"), _pixels(buffers[1], header, "denoised"),
                     header)  # type: ignore[arg-type]


class ViewFeed:
    """Subscribe to a server's view (and, given ``stats_address``, stats) socket. Call :meth:`poll` whenever the
    viewer can draw: the newest pair that arrived since, or None; :meth:`shown` after drawing one. ``keys``: the
    CURVE keys for a server made with ``n2n keys``."""

    def __init__(self, view_address: str, stats_address: str | None = None, keys: ClientKeys | None = None,
                 window: int = 1000) -> None:
        self.view_address = view_address
        self._ctx = zmq.Context()
        self._view = self._subscribe(view_address, keys)
        try:
            self._stats = None if stats_address is None else StatsSubscriber(stats_address, keys, self._ctx, 4,
                                                                               _SOCKET_BUFFER)
        except ValueError:
            self._view.close(linger=0)
            self._ctx.term()
            raise
        self.received = 0  # pairs taken off the socket
        self.shown_count = 0  # pairs drawn
        self.skipped = 0  # frames between two drawn ones the viewer never drew (it was behind, or the server dropped)
        self._bad_views = 0  # messages that were not a view pair
        self.server: StatsMessage | None = None  # the newest stats message
        self.rate = RateMeter()
        self.latency_ms: deque[float] = deque(maxlen=window)  # capture → drawn
        self._last_seq: int | None = None

    @property
    def bad(self) -> int:
        """Messages that were not a view pair, or not a stats message."""
        return self._bad_views + (self._stats.bad if self._stats is not None else 0)

    def _subscribe(self, address: str, keys: ClientKeys | None) -> zmq.Socket:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, _RCVHWM)
        sock.setsockopt(zmq.RCVBUF, _SOCKET_BUFFER)  # frames must not queue in the kernel either
        if keys is not None:
            keys.apply(sock)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC_VIEW)
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._ctx.term()
            raise ValueError(f"expected a ZeroMQ address such as tcp://127.0.0.1:5560, got {address!r} "
                             f"({exc.strerror})") from None
        return sock

    def __enter__(self) -> ViewFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._view.close(linger=0)
        if self._stats is not None:
            self._stats.close()
        self._ctx.term()

    def poll(self, timeout: float = 0.0) -> ViewFrame | None:
        """The newest pair that has arrived (waiting up to ``timeout`` s for one), or None; older ones are let go."""
        newest: list[Any] | None = None
        if self._view.poll(int(timeout * 1000)):
            while True:
                try:
                    parts = self._view.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.received += 1
                newest = parts
        self._poll_stats()
        if newest is None:
            return None
        try:
            return decode_view(newest)
        except ValueError:
            self._bad_views += 1
            return None

    def _poll_stats(self) -> None:
        if self._stats is not None:
            for message in self._stats.messages():
                self.server = message

    def shown(self, frame: ViewFrame) -> None:
        """Count ``frame`` as drawn now: display rate, latency from capture, frames skipped since the last one."""
        self.shown_count += 1
        self.rate.tick()
        seq = frame.seq
        if seq is not None and self._last_seq is not None and seq > self._last_seq:
            self.skipped += seq - self._last_seq - 1
        self._last_seq = seq if seq is not None else self._last_seq
        latency = frame.latency_ms()
        if latency is not None:
            self.latency_ms.append(latency)

    def summary(self) -> dict[str, Any]:
        """What the viewer did: pairs received and drawn, frames skipped, the display rate, latency capture → drawn."""
        return {"received": self.received, "shown": self.shown_count, "skipped": self.skipped, "bad": self.bad,
                "display_fps": round(self.rate.rate(), 2), "latency_ms": summary(self.latency_ms)}
