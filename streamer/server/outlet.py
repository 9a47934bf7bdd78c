"""What goes out: each denoised frame to the output's subscribers (a request's to its caller, with a copy for
viewers), its raw | denoised pair to viewers, and an error reply or notice for bad input. Lossless mode waits for
a subscriber with no room, serving the loop's other sockets meanwhile (the loop's own handlers, one turn at a
time), up to ``slow_subscriber_timeout_s``; live mode never waits."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from ..core.messages import FrameHeader
from ..denoiser import Denoiser, Timings
from ..protocol import (
    PROTOCOL_VERSION,
    TOPIC_ERROR,
    TOPIC_FRAME,
    TOPIC_REPLY,
    TOPIC_VIEW,
    Message,
    ProtocolError,
    encode_error,
)
from .config import ServeConfig
from .peers import Peers
from .sockets import Sockets
from .stats import ServerStats

__all__ = ["Outlet"]

log = logging.getLogger("n2n.streamer")

WAIT_TURN_MS = 10
"""Lossless mode, a subscriber with no room: the loop's other sockets are served this long between two tries."""


class Outlet:
    """Sends for the server. ``turn(ms)`` is the loop's: serve every socket but the input once, waiting up to
    ``ms`` (what a lossless wait does between two tries)."""

    def __init__(self, config: ServeConfig, sockets: Sockets, peers: Peers, stats: ServerStats,
                 stop: threading.Event, turn: Callable[[int], object]) -> None:
        self.config = config
        self._sockets = sockets
        self._peers = peers
        self._stats = stats
        self._stop = stop
        self._turn = turn
        self._stalled = False  # lossless: a subscriber has been past its wait; frames drop until it reads
        self._error_logs: dict[str, int] = {}

    def deliver(self, msg: Message, envelope: list[Any] | None, out: np.ndarray, t: Timings,
                denoiser: Denoiser | None, flags: tuple[str, ...] = ()) -> bool:
        """Send one denoised frame; True when it reached somebody (counted as done, and by each of its ``flags``),
        False when dropped (counted with the reason). ``flags``: what the Denoiser's checks said of this frame
        (:attr:`Denoiser.last_flags`), sent in the header's ``flags`` when there are any. ``denoiser``: the model
        that served it (None: none did, the frame goes back raw: engine ``none``, model ``""``)."""
        h = msg.header
        sent = time.time_ns()
        header: FrameHeader = {"v": PROTOCOL_VERSION, "type": "frame", "seq": msg.seq, "shape": list(out.shape),
                               "dtype": out.dtype.name, "ts_ns": h.get("ts_ns"), "meta": h.get("meta", {}),
                               "engine": denoiser.engine.name if denoiser is not None else "none",
                               "model": denoiser.card.name if denoiser is not None else "",
                               "stages": {"received": msg.received_ns, "preprocessed": t.preprocessed,
                                          "inferred": t.inferred, "sent": sent}}
        if flags:  # only when a check said something: a frame served as checked has no "flags"
            header["flags"] = list(flags)
        head = json.dumps(header, separators=(",", ":")).encode()
        body = np.ascontiguousarray(out).data
        if envelope is not None:
            self._sockets["request"].send_multipart([*envelope, head, body], copy=False)
        if self._peers.viewers:
            self._publish_view(msg, header, body)
        # a request's result goes back to its caller; on the output it is a 'reply' (viewers may watch it),
        # never a 'frame': a consumer of the stream must not take it for the result of a frame it pushed
        if envelope is not None:  # viewers may watch replies, never worth waiting for: the caller has its own
            self._publish_now([TOPIC_REPLY, head, body])
        else:
            dropped = self._send_output([TOPIC_FRAME, head, body])
            if dropped is None and self._peers.subscribers == 0 and self._peers.viewers == 0:
                dropped = "no_subscriber"  # published to nobody: not delivered
            if dropped is not None:
                self._stats.on_dropped(reason=dropped)  # denoised, never delivered
                return False
        stages = {"received": msg.received_ns, "start": t.start, "preprocessed": t.preprocessed,
                  "inferred": t.inferred, "postprocessed": t.postprocessed, "sent": sent}
        self._stats.on_done(stages, h.get("ts_ns"), request=envelope is not None, flags=flags)
        return True

    def _publish_view(self, msg: Message, header: FrameHeader, body: Any) -> None:
        """Raw and denoised pixels of one frame to the viewers. Never waits: the view socket is lossy, a viewer with
        two messages queued misses this one (it sees the gap in ``seq``)."""
        raw = msg.pixels
        head = json.dumps({**header, "raw": {"shape": list(raw.shape), "dtype": raw.dtype.name}},
                          separators=(",", ":")).encode()
        self._sockets["view"].send_multipart([TOPIC_VIEW, head, np.ascontiguousarray(raw).data, body],
                                             zmq.NOBLOCK, copy=False)
        self._stats.view_frames += 1

    def _publish_now(self, parts: list[Any]) -> bool:
        try:
            self._sockets["output"].send_multipart(parts, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _send_output(self, parts: list[Any]) -> str | None:
        """Publish a frame; None when it went, else why it was dropped. Live mode drops at a full subscriber
        (ZeroMQ's high-water mark) by itself. Lossless mode waits for a slow subscriber, up to
        ``slow_subscriber_timeout_s``, serving control, requests and stats meanwhile; past it the frame and
        every frame after it are dropped (counted) until the subscriber has room again."""
        if self._publish_now(parts):
            self._stalled = False
            return None
        if self.config.mode != "lossless":
            return "slow_subscriber"
        if self._stalled or self._stop.is_set():
            return "slow_subscriber" if self._stalled else "stopping"
        timeout = self.config.slow_subscriber_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if self._stop.is_set():
                return "stopping"
            self._turn(WAIT_TURN_MS)
            if self._publish_now(parts):
                return None
        self._stalled = True  # from now on drop at once, until a frame goes through again
        log.warning("a subscriber took no frame for %.1f s: dropping frames until it reads again", timeout)
        return "slow_subscriber"

    def reject(self, exc: ProtocolError, envelope: list[Any] | None) -> None:
        """Bad input: counted, logged (rate-limited), and answered: an error reply to a caller, an ``error`` notice
        on the output for a pushed frame (never waited for: a notice the output cannot take is counted)."""
        self._stats.on_error(exc.code)
        self.complain(exc.code, f"seq={exc.seq}: {exc}")
        head = encode_error(exc.code, str(exc), exc.seq)
        if envelope is not None:  # the caller gets it; the output's consumers must not take it for theirs
            self._sockets["request"].send_multipart([*envelope, head, b""], copy=False)
            return
        try:
            self._sockets["output"].send_multipart([TOPIC_ERROR, head], zmq.NOBLOCK)
        except zmq.Again:
            self._stats.notices_dropped += 1

    def complain(self, code: str, text: str) -> None:
        """A log line for a counted error: the first ten of each kind, then every hundredth."""
        n = self._error_logs[code] = self._error_logs.get(code, 0) + 1
        if n <= 10 or n % 100 == 0:
            log.warning("bad input (%s, #%d): %s", code, n, text)
