"""What comes in: frames pushed to the input and requests on the request socket, read whole but bounded, decoded
(a bad one rejected, counted, never raised) and checked against the model of their channel (:mod:`.routes`),
queued the way the mode wants (live: the newest frame wins; lossless: in order, up to the queue's size, then
backpressure), and taken out as frames or batches (of one model); and the per-stream frame history a K-frame model
denoises with."""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import zmq

from ..core.history import FrameHistory, Histories
from ..core.streams import key_text
from ..protocol import Message, ProtocolError, decode_frame
from .config import ServeConfig
from .stats import ServerStats

if TYPE_CHECKING:
    from .routes import Routes

__all__ = ["HEADER_BYTES", "Intake", "LiveInput", "Received", "Streams"]

log = logging.getLogger("n2n.streamer")

DRAIN_LIMIT = 1_000
"""Messages read in one turn at most (a flood cannot starve requests and control)."""
HEADER_BYTES = 65536
"""Room for a message's other parts (JSON header, a request's envelope) beside ``max_message_bytes`` of pixels."""
INPUT_MAX_PARTS = 2  # header, pixels
REQUEST_MAX_PARTS = 8  # a ROUTER's routing frames, the empty delimiter, header, pixels

Envelope = list[Any]
"""A request's routing frames up to and including the empty delimiter (None for pushed frames)."""
Reject = Callable[[ProtocolError, "Envelope | None"], None]
Complain = Callable[[str, str], None]


class Received(NamedTuple):
    """A message as read: its parts kept (see :meth:`Intake.recv_bounded`), how many it had, its bytes in all."""

    parts: list[Any]
    n_parts: int
    size: int


class Streams:
    """The frames before each frame of a K-frame model, kept per stream: ``meta.stream`` (any JSON value; one
    default stream without it) and ``meta.channel`` (a frame's channel never takes another channel's frames as its
    history, whatever its stream says), and on the request path per caller as well. Nothing for K = 1. One per
    model of a set (:mod:`.routes`): each model has its own K, and never sees another model's frames."""

    def __init__(self, frames: int, config: ServeConfig, stats: ServerStats) -> None:
        self.frames = frames
        self._stats = stats
        self._histories = Histories(frames, config.motion_threshold, config.max_streams, on_reset=self._reset,
                                    on_motion=self._moved)

    def _reset(self, reason: str) -> None:
        self._stats.history_resets[reason] += 1

    def _moved(self) -> None:
        self._stats.motion_fallbacks += 1

    def history(self, msg: Message, envelope: Envelope | None) -> FrameHistory:
        meta = msg.header.get("meta")
        stream, channel = (meta.get("stream"), meta.get("channel")) if isinstance(meta, dict) else (None, None)
        key = key_text(stream)
        if channel is not None:
            key = f"channel:{key_text(channel)}:{key}"
        if envelope is not None:
            key = f"request:{bytes(envelope[0].buffer).hex()}:{key}"
        return self._histories.get(key)

    def previous(self, msg: Message, envelope: Envelope | None) -> list[np.ndarray]:
        """The frames before ``msg`` in its stream that it is denoised with, and ``msg`` kept as history."""
        if self.frames == 1:
            return []
        hist = self.history(msg, envelope)
        short = hist.short
        previous = hist.advance(msg.pixels, msg.seq)
        self._stats.history_short += hist.short - short
        return previous

    def skipped(self, msg: Message) -> None:
        """A pushed frame dropped in live mode: not denoised, but its photons count for the next frame."""
        if self.frames > 1:
            self.history(msg, None).skip(msg.pixels, msg.seq)

    def restart(self, reason: str, frames: int) -> None:
        """Every stream afresh (another model, with ``frames`` K)."""
        self.frames = frames
        self._histories.reset_all(reason, frames)


class LiveInput:
    """Live mode's input, read by a thread of its own while the loop denoises: ZeroMQ's queue stays a message or
    two deep (``RCVHWM``), and what arrived waits here, bounded in bytes (``input_buffer_bytes``) whatever the
    frames' size: past it the oldest messages are let go (counted as ``input`` drops by the loop: newer ones
    came, as the loop would have dropped them). The loop polls :meth:`fileno` and calls :meth:`take`."""

    def __init__(self, sock: zmq.Socket, budget_bytes: int, max_bytes: int) -> None:
        self._sock = sock  # this thread's alone once started
        self.budget_bytes = budget_bytes
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._waiting: deque[Received] = deque()
        self._bytes = 0
        self._evicted = 0
        self._signalled = False
        self.peak_bytes = 0
        """The most bytes that waited here at once."""
        self._wake, self._signal = socket.socketpair()
        self._wake.setblocking(False)
        self._signal.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="n2n-input", daemon=True)

    def fileno(self) -> int:
        """Readable when messages wait (for the loop's poller)."""
        return self._wake.fileno()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(50):
                    continue
                for _ in range(DRAIN_LIMIT):
                    try:
                        got = Intake.recv_bounded(self._sock, INPUT_MAX_PARTS, self._max_bytes)
                    except zmq.Again:
                        break
                    self._put(got)
        except zmq.ZMQError as exc:  # the context ended under us: the server is closing
            if not self._stop.is_set():
                log.warning("the input thread stopped: %s", exc)

    def _put(self, got: Received) -> None:
        if got.size > self._max_bytes:  # refused by the loop for its size alone: keep none of its parts
            got = Received([], got.n_parts, got.size)
        held = got.size if got.size <= self._max_bytes else 0
        with self._lock:
            while self._waiting and self._bytes + held > self.budget_bytes:
                old = self._waiting.popleft()
                self._bytes -= old.size if old.size <= self._max_bytes else 0
                self._evicted += 1
            self._waiting.append(got)
            self._bytes += held
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            signal = not self._signalled
            self._signalled = True
        if signal:
            with suppress(OSError):
                self._signal.send(b"x")

    def take(self) -> tuple[list[Received], int]:
        """What waits (oldest first), and how many messages were let go since the last call."""
        with suppress(OSError):
            while self._wake.recv(4096):
                pass
        with self._lock:
            got, evicted = list(self._waiting), self._evicted
            self._waiting.clear()
            self._bytes = self._evicted = 0
            self._signalled = False
        return got, evicted

    def close(self) -> None:
        """Stop the thread (before its socket closes)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._wake.close()
        self._signal.close()


class Intake:
    """The input and request sockets' reading side, and the queue of frames waiting to be denoised."""

    def __init__(self, config: ServeConfig, stats: ServerStats, reject: Reject, complain: Complain) -> None:
        self.config = config
        self._stats = stats
        self._reject = reject  # an error reply (or notice) for bad input, counted
        self._complain = complain  # a counted error's log line, rate-limited
        self.queue: deque[Message] = deque()
        self._warned_dtypes: set[tuple[str, str]] = set()

    def decode(self, parts: list[Any], routes: Routes) -> Message:
        """A message checked against the protocol and against the model its channel goes to (a frame no model
        serves is passed through raw: the protocol's checks only)."""
        msg = decode_frame(parts, self.config.max_message_bytes, min_side=routes.min_side,
                           fixed_shape=routes.fixed_shape)
        lane = routes.lane(msg)
        if lane is None:
            return msg
        denoiser = lane.denoiser
        if not routes.uniform:  # a model set: this model's own sizes
            try:
                denoiser.check_shape(msg.pixels.shape)
            except ValueError as exc:
                raise ProtocolError("bad_shape", f"{exc} (the model of this frame's channel)", msg.seq) from None
        expected = denoiser.card.input_dtype
        dtype = msg.pixels.dtype.name
        if expected and dtype != expected and msg.pixels.dtype.kind in "ui" and np.dtype(expected).kind in "ui":
            # another bit depth is another scale: the model would serve it worse than raw (as n2n denoise refuses)
            raise ProtocolError("dtype", f"expected {expected} frames (the bit depth the model was trained on), got "
                                         f"{dtype}: send the camera's frames as they are, or serve a model trained "
                                         "on this bit depth", msg.seq)
        if expected and dtype != expected and (dtype, expected) not in self._warned_dtypes:
            self._warned_dtypes.add((dtype, expected))
            log.warning("frames arrive as %s but the model (%s) was trained on %s: check the camera's bit depth",
                        dtype, denoiser.card.name, expected)
        return msg

    @staticmethod
    def recv_bounded(sock: zmq.Socket, max_parts: int, max_bytes: int | None = None) -> Received:
        """One whole message, part by part: its first ``max_parts`` parts, how many it had and their bytes in all
        (the rest read and let go one at a time, so that a message of many parts never sits in memory here at
        once; past ``max_bytes`` in all no part is kept). ZeroMQ itself hands a message over only once all of it
        has arrived: what it holds before is bounded by the socket's options (see docs/security.md)."""
        first = sock.recv(zmq.NOBLOCK, copy=False)
        parts: list[Any] = [first]
        count, size = 1, len(first.buffer)
        while sock.getsockopt(zmq.RCVMORE):
            part = sock.recv(copy=False)
            count += 1
            size += len(part.buffer)
            if count <= max_parts and (max_bytes is None or size <= max_bytes):
                parts.append(part)  # beyond: counted, let go
        return Received(parts, count, size)

    def drain(self, sock: zmq.Socket, routes: Routes, pump: LiveInput | None = None) -> None:
        """Every pushed frame waiting (at most :data:`DRAIN_LIMIT` from the socket): lossless, until the queue is
        full; live, from ``pump`` (what its thread read meanwhile, within its byte budget), the newest replacing
        the one waiting (dropped, counted)."""
        lossless = self.config.mode == "lossless"
        if pump is not None:
            received, evicted = pump.take()
            if evicted:  # read, and let go by the pump to stay within input_buffer_bytes: newer ones came
                self._stats.on_received(evicted)
                self._stats.on_dropped(evicted)
            for got in received:
                self._accept(got, routes, lossless)
            self._stats.queue_depth = len(self.queue)
            return
        for _ in range(DRAIN_LIMIT):
            if lossless and len(self.queue) >= self.config.queue_size:
                break  # backpressure: leave the rest in ZeroMQ's queues
            try:
                got = self.recv_bounded(sock, INPUT_MAX_PARTS, self.config.max_message_bytes + HEADER_BYTES)
            except zmq.Again:
                break
            self._accept(got, routes, lossless)
        self._stats.queue_depth = len(self.queue)

    def _accept(self, got: Received, routes: Routes, lossless: bool) -> None:
        """One pushed message: refused (counted, with a notice), or queued (live: the newest wins)."""
        self._stats.on_received()
        limit = self.config.max_message_bytes + HEADER_BYTES
        if got.size > limit:
            self._reject(ProtocolError("oversized", f"expected a message of at most {limit} bytes in all, got "
                                                    f"{got.size} bytes in {got.n_parts} parts"), None)
            return
        if got.n_parts > INPUT_MAX_PARTS:
            self._reject(ProtocolError("bad_parts", f"expected 2 message parts (JSON header, pixels), got "
                                                    f"{got.n_parts}"), None)
            return
        try:
            msg = self.decode(got.parts, routes)
        except ProtocolError as exc:
            self._reject(exc, None)
            return
        if not lossless and self.queue:
            dropped = routes.lane(self.queue[0])
            if dropped is not None:  # (a frame no model serves keeps no history)
                dropped.streams.skipped(self.queue[0])
            self.queue.clear()  # latest frame wins
            self._stats.on_dropped()
        self.queue.append(msg)

    def request(self, sock: zmq.Socket, routes: Routes) -> tuple[Message, Envelope] | bool:
        """The next request: its frame and envelope; True when one was read and answered already (malformed),
        False when none waits."""
        try:
            parts, count, size = self.recv_bounded(sock, REQUEST_MAX_PARTS,
                                                   self.config.max_message_bytes + HEADER_BYTES)
        except zmq.Again:
            return False
        # envelope: routing id(s) up to and including the empty delimiter frame
        split = next((i for i, p in enumerate(parts) if len(p.buffer) == 0), None)
        if split is None:
            self._stats.on_error("bad_envelope")
            self._complain("bad_envelope", "request without an empty delimiter frame (use a REQ or DEALER socket)")
            return True
        envelope, body = parts[: split + 1], parts[split + 1 :]
        self._stats.on_received()
        if size > self.config.max_message_bytes + HEADER_BYTES:
            self._reject(ProtocolError("oversized", f"expected a message of at most {self.config.max_message_bytes} "
                                                    f"bytes in all, got {size} bytes in {count} parts"), envelope)
            return True
        if count > REQUEST_MAX_PARTS:  # answered (a REQ caller would otherwise wait for its timeout)
            self._reject(ProtocolError("bad_parts", f"expected 2 message parts (JSON header, pixels) after the "
                                                    f"envelope, got {count - split - 1}"), envelope)
            return True
        try:
            return self.decode(body, routes), envelope
        except ProtocolError as exc:
            self._reject(exc, envelope)
            return True

    def take(self, routes: Routes) -> list[Message]:
        """The next frame, with the frames behind it when batching pays: lossless mode, a full batch of
        ``max_batch`` small frames of one shape and dtype and one model waiting (partial batches would compile new
        shapes for little gain; frames of other models, or of none, interleaved go one by one, in order)."""
        first = self.queue.popleft()
        cfg = self.config
        n = min(cfg.max_batch, cfg.queue_size)  # a batch is made of frames already waiting in the queue
        if cfg.mode != "lossless" or n < 2 or len(self.queue) < n - 1 or first.pixels.size > cfg.batch_max_pixels:
            batch = [first]
        elif (lane := routes.lane(first)) is None:
            batch = [first]
        else:
            same = [m for m in list(self.queue)[: n - 1]
                    if m.pixels.shape == first.pixels.shape and m.pixels.dtype == first.pixels.dtype
                    and (routes.only is not None or routes.lane(m) is lane)]
            batch = [first] if len(same) < n - 1 else [first, *same]
            for _ in range(len(batch) - 1):
                self.queue.popleft()
        self._stats.queue_depth = len(self.queue)
        return batch
