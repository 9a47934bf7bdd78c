"""What comes in: frames pushed to the input and requests on the request socket, read whole but bounded, decoded
(a bad one rejected, counted, never raised), queued the way the mode wants (live: the newest frame wins; lossless:
in order, up to the queue's size, then backpressure), and taken out as frames or batches; and the per-stream
frame history a K-frame model denoises with."""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from ..core.history import FrameHistory, Histories
from ..denoiser import Denoiser
from ..protocol import Message, ProtocolError, decode_frame
from .config import ServeConfig
from .stats import ServerStats

__all__ = ["Intake", "Streams"]

log = logging.getLogger("n2n.streamer")

DRAIN_LIMIT = 1_000
"""Messages read in one turn at most (a flood cannot starve requests and control)."""
INPUT_MAX_PARTS = 2  # header, pixels
REQUEST_MAX_PARTS = 8  # a ROUTER's routing frames, the empty delimiter, header, pixels

Envelope = list[Any]
"""A request's routing frames up to and including the empty delimiter (None for pushed frames)."""
Reject = Callable[[ProtocolError, "Envelope | None"], None]
Complain = Callable[[str, str], None]


class Streams:
    """The frames before each frame of a K-frame model, kept per stream: ``meta.stream`` (any JSON value; one
    default stream without it), and on the request path per caller as well. Nothing for K = 1."""

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
        stream = meta.get("stream") if isinstance(meta, dict) else None
        key = "" if stream is None else json.dumps(stream, separators=(",", ":"))[:256]
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


class Intake:
    """The input and request sockets' reading side, and the queue of frames waiting to be denoised."""

    def __init__(self, config: ServeConfig, stats: ServerStats, reject: Reject, complain: Complain) -> None:
        self.config = config
        self._stats = stats
        self._reject = reject  # an error reply (or notice) for bad input, counted
        self._complain = complain  # a counted error's log line, rate-limited
        self.queue: deque[Message] = deque()
        self._warned_dtypes: set[str] = set()

    def decode(self, parts: list[Any], denoiser: Denoiser) -> Message:
        msg = decode_frame(parts, self.config.max_message_bytes, min_side=denoiser.min_side,
                           fixed_shape=denoiser.fixed_shape)
        expected = denoiser.card.input_dtype
        dtype = msg.pixels.dtype.name
        if expected and dtype != expected and dtype not in self._warned_dtypes:
            self._warned_dtypes.add(dtype)
            log.warning("frames arrive as %s but the model was trained on %s: check the camera's bit depth",
                        dtype, expected)
        return msg

    @staticmethod
    def recv_bounded(sock: zmq.Socket, max_parts: int) -> tuple[list[Any], int]:
        """One whole message, part by part: its first ``max_parts`` parts and how many it had (the rest read and
        let go one at a time, so that a message of many parts never sits in memory here at once)."""
        parts: list[Any] = [sock.recv(zmq.NOBLOCK, copy=False)]
        count = 1
        while sock.getsockopt(zmq.RCVMORE):
            part = sock.recv(copy=False)
            count += 1
            if count <= max_parts:
                parts.append(part)  # beyond: counted, let go
        return parts, count

    def drain(self, sock: zmq.Socket, denoiser: Denoiser, streams: Streams) -> None:
        """Every pushed frame waiting (at most :data:`DRAIN_LIMIT`): lossless, until the queue is full; live, the
        newest replaces the one waiting (dropped, counted)."""
        lossless = self.config.mode == "lossless"
        for _ in range(DRAIN_LIMIT):
            if lossless and len(self.queue) >= self.config.queue_size:
                break  # backpressure: leave the rest in ZeroMQ's queues
            try:
                parts, count = self.recv_bounded(sock, INPUT_MAX_PARTS)
            except zmq.Again:
                break
            self._stats.on_received()
            if count > INPUT_MAX_PARTS:
                self._reject(ProtocolError("bad_parts", f"expected 2 message parts (JSON header, pixels), got "
                                                        f"{count}"), None)
                continue
            try:
                msg = self.decode(parts, denoiser)
            except ProtocolError as exc:
                self._reject(exc, None)
                continue
            if not lossless and self.queue:
                streams.skipped(self.queue[0])
                self.queue.clear()  # latest frame wins
                self._stats.on_dropped()
            self.queue.append(msg)
        self._stats.queue_depth = len(self.queue)

    def request(self, sock: zmq.Socket, denoiser: Denoiser) -> tuple[Message, Envelope] | bool:
        """The next request: its frame and envelope; True when one was read and answered already (malformed),
        False when none waits."""
        try:
            parts, count = self.recv_bounded(sock, REQUEST_MAX_PARTS)
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
        if count > REQUEST_MAX_PARTS:  # answered (a REQ caller would otherwise wait for its timeout)
            self._reject(ProtocolError("bad_parts", f"expected 2 message parts (JSON header, pixels) after the "
                                                    f"envelope, got {count - split - 1}"), envelope)
            return True
        try:
            return self.decode(body, denoiser), envelope
        except ProtocolError as exc:
            self._reject(exc, envelope)
            return True

    def take(self) -> list[Message]:
        """The next frame, with the frames behind it when batching pays: lossless mode, a full batch of
        ``max_batch`` small frames of one shape and dtype waiting (partial batches would compile new shapes for
        little gain)."""
        first = self.queue.popleft()
        cfg = self.config
        n = min(cfg.max_batch, cfg.queue_size)  # a batch is made of frames already waiting in the queue
        if cfg.mode != "lossless" or n < 2 or len(self.queue) < n - 1 or first.pixels.size > cfg.batch_max_pixels:
            batch = [first]
        else:
            same = [m for m in list(self.queue)[: n - 1]
                    if m.pixels.shape == first.pixels.shape and m.pixels.dtype == first.pixels.dtype]
            batch = [first] if len(same) < n - 1 else [first, *same]
            for _ in range(len(batch) - 1):
                self.queue.popleft()
        self._stats.queue_depth = len(self.queue)
        return batch
