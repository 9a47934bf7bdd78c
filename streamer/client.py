"""``StreamClient``: talk to ``n2n serve`` from Python (every wait has a timeout).

::

    with StreamClient() as client:                    # the default 127.0.0.1 addresses
        denoised = client.request(frame).pixels       # synchronous: one frame in, one out
        client.send(frame)                            # push into the stream ...
        result = client.receive(timeout=1.0)          # ... and take results from the output
        print(client.stats()["latency_ms"])
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from .core.messages import FrameHeader, StatsMessage, decode_pixels
from .endpoints import Endpoints
from .protocol import TOPIC_ERROR, TOPIC_FRAME, TOPIC_REPLY, TOPIC_STATS, decode_header, encode_frame
from .security import ClientKeys

__all__ = ["Result", "ServerError", "StatsSubscriber", "StreamClient", "read_ready_file"]


class ServerError(RuntimeError):
    """The server answered with an error message (``code`` is its kind, e.g. ``bad_shape``)."""

    def __init__(self, header: dict[str, Any]) -> None:
        super().__init__(f"{header.get('error')}: {header.get('message')}")
        self.code = header.get("error")
        self.header = header


@dataclass
class Result:
    """A denoised frame and its header (seq, meta, per-stage timestamps)."""

    pixels: np.ndarray
    header: FrameHeader

    @property
    def seq(self) -> int | None:
        return self.header.get("seq")


_MAX_OUTSTANDING = 100_000  # frames tracked at most (the oldest are forgotten beyond)


def _decode_result(parts: list[bytes]) -> Result:
    header = decode_header(parts[0])
    if header.get("type") == "error":
        raise ServerError(header)
    if len(parts) != 2:
        raise ValueError(f"expected 2 parts (header, pixels) from the server, got {len(parts)}")
    return Result(decode_pixels(parts[1], header["shape"], header["dtype"]), header)  # type: ignore[arg-type]


def read_ready_file(path: str | Path) -> dict[str, str]:
    """The endpoints a running ``n2n serve --ready-file`` wrote."""
    try:
        endpoints = json.loads(Path(path).read_text())["endpoints"]
        missing = {"input", "output", "control"} - set(endpoints)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected the JSON a `n2n serve --ready-file` writes, with 'endpoints' "
                         f"(input, output, control), got {type(exc).__name__}: {exc}") from None
    if missing:
        raise ValueError(f"{path}: expected 'endpoints' with input, output and control, got no "
                         f"{', '.join(sorted(missing))}")
    return dict(endpoints)


class StreamClient:
    """Sockets to a running server, opened lazily: input (PUSH), request (REQ), output and
    stats (SUB), control (REQ). ``endpoints`` takes the server's addresses (an
    :class:`Endpoints` or a dict, e.g. a server's ``.endpoints``); ``timeout`` (s) bounds every wait.
    :meth:`receive` gives the results of frames pushed with :meth:`send` (by any producer); with
    ``replies=True`` also copies of request results (what a viewer of everything wants)."""

    def __init__(self, endpoints: Endpoints | Mapping[str, str] | None = None, timeout: float = 10.0,
                 errors: bool = False, send_hwm: int | None = None, replies: bool = False,
                 keys: ClientKeys | None = None) -> None:
        if endpoints is None:
            endpoints = Endpoints()
        self.endpoints = dict(endpoints.model_dump() if isinstance(endpoints, Endpoints) else endpoints)
        self.timeout = timeout
        self.errors = errors
        self.replies = replies
        self.send_hwm = send_hwm  # frames the input socket queues before send() waits (None: ZeroMQ's 1000)
        self.keys = keys  # CURVE: the server's public key and this client's pair (a server with curve_keys)
        self._ctx = zmq.Context()
        self._sockets: dict[str, zmq.Socket] = {}
        self._seq = 0
        # accounting of the frames this client pushes and gets back (see accounting())
        self.sent = 0
        self.acknowledged = 0
        self.lost = 0
        self._outstanding: OrderedDict[int, None] = OrderedDict()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        self._ctx.term()

    def _socket(self, name: str) -> zmq.Socket:
        sock = self._sockets.get(name)
        if sock is None:
            kind = {"input": zmq.PUSH, "request": zmq.REQ, "output": zmq.SUB, "stats": zmq.SUB,
                    "control": zmq.REQ}[name]
            sock = self._ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if self.keys is not None:
                self.keys.apply(sock)
            if name == "input":
                # queue frames only on a live connection: against a dead server send() waits its timeout and
                # says so, instead of filling a queue nobody will read (and losing it silently)
                sock.setsockopt(zmq.IMMEDIATE, 1)
                if self.send_hwm is not None:
                    sock.setsockopt(zmq.SNDHWM, self.send_hwm)
            if kind == zmq.REQ:  # a timed-out request must not wedge the socket
                sock.setsockopt(zmq.REQ_RELAXED, 1)
                sock.setsockopt(zmq.REQ_CORRELATE, 1)
            if name == "output":
                sock.setsockopt(zmq.SUBSCRIBE, TOPIC_FRAME)
                if self.errors:
                    sock.setsockopt(zmq.SUBSCRIBE, TOPIC_ERROR)
                if self.replies:
                    sock.setsockopt(zmq.SUBSCRIBE, TOPIC_REPLY)
            if name == "stats":
                sock.setsockopt(zmq.SUBSCRIBE, TOPIC_STATS)
            sock.connect(self.endpoints[name])
            self._sockets[name] = sock
        return sock

    def _limit(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _no_answer(self, sock: zmq.Socket, t: float, what: str) -> TimeoutError:
        hint = "is `n2n serve` running there" + (", and does it know this client's key?)" if self.keys is not None
                                                 else "?)")
        return TimeoutError(f"no {what} within {t:g} s from {sock.getsockopt_string(zmq.LAST_ENDPOINT)} ({hint}")

    def _wait(self, sock: zmq.Socket, timeout: float | None, flags: int, what: str) -> None:
        t = self._limit(timeout)
        if not sock.poll(int(t * 1000), flags):
            raise self._no_answer(sock, t, what)

    def _drop(self, name: str) -> None:
        """Close a socket whose exchange timed out: the next call opens a fresh one (a REQ socket whose request
        was never taken, e.g. by a CURVE server that refused this client's key, would block its next send)."""
        sock = self._sockets.pop(name, None)
        if sock is not None:
            sock.close(linger=0)

    def _exchange(self, name: str, parts: list[Any], timeout: float | None, what: str) -> list[bytes]:
        """One request and its reply on the ``name`` REQ socket, both bounded by ``timeout`` (the send too:
        a REQ socket with no peer that completed its handshake blocks in send); on a timeout the socket is
        replaced and TimeoutError says so."""
        t = self._limit(timeout)
        sock = self._socket(name)
        deadline = time.monotonic() + t
        try:
            sock.setsockopt(zmq.SNDTIMEO, max(0, int(t * 1000)))
            if not sock.poll(int(t * 1000), zmq.POLLOUT):
                raise zmq.Again()
            sock.send_multipart(parts, copy=False)
            if not sock.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLIN):
                raise zmq.Again()
            return sock.recv_multipart()
        except zmq.Again:
            error = self._no_answer(sock, t, what)
            self._drop(name)
            raise error from None

    # --- sending -------------------------------------------------------------------------------------
    def send(self, pixels: np.ndarray, seq: int | None = None, meta: Mapping[str, Any] | None = None,
             ts_ns: int | None = None, timeout: float | None = None) -> int:
        """Push one frame into the stream; returns its sequence number. Blocks (up to
        ``timeout``) when a lossless server applies backpressure."""
        seq = self._next_seq(seq)
        sock = self._socket("input")
        what = "room to send (the server is not taking frames)"
        self._wait(sock, timeout, zmq.POLLOUT, what)
        sock.setsockopt(zmq.SNDTIMEO, max(0, int(self._limit(timeout) * 1000)))
        try:
            sock.send_multipart(encode_frame(pixels, seq, ts_ns, meta), copy=False)
        except zmq.Again:
            raise self._no_answer(sock, self._limit(timeout), what) from None
        self.sent += 1
        if "output" in self._sockets:  # this client reads the results: account for each frame it pushed
            self._outstanding[seq] = None
            while len(self._outstanding) > _MAX_OUTSTANDING:
                self._outstanding.popitem(last=False)
        return seq

    def accounting(self) -> dict[str, int]:
        """Frames this client pushed (while subscribed) and what became of them: ``acknowledged`` (its result came
        back), ``lost`` (never came back though a later frame's did: the output keeps the order, so these were
        dropped, or lost with a server that died), ``outstanding`` (not back yet)."""
        return {"sent": self.sent, "acknowledged": self.acknowledged, "lost": self.lost,
                "outstanding": len(self._outstanding)}

    def request(self, pixels: np.ndarray, meta: Mapping[str, Any] | None = None, seq: int | None = None,
                timeout: float | None = None) -> Result:
        """Send one frame on the request path and wait for its denoised frame."""
        seq = self._next_seq(seq)
        return _decode_result(self._exchange("request", encode_frame(pixels, seq, None, meta), timeout, "reply"))

    def _next_seq(self, seq: int | None) -> int:
        if seq is None:
            seq = self._seq
        self._seq = seq + 1
        return seq

    # --- receiving -----------------------------------------------------------------------------------
    def subscribe(self) -> None:
        """Connect to the output now (a subscriber only sees frames published after it joined)."""
        self._socket("output")

    def receive(self, timeout: float | None = None) -> Result:
        """The next denoised frame from the output (raises :class:`ServerError` for an error
        message when constructed with ``errors=True``)."""
        sock = self._socket("output")
        self._wait(sock, timeout, zmq.POLLIN, "denoised frame")
        parts = sock.recv_multipart()
        result = _decode_result(parts[1:])
        if parts[0] == TOPIC_FRAME and result.seq in self._outstanding:
            while self._outstanding:
                seq, _ = self._outstanding.popitem(last=False)
                if seq == result.seq:
                    self.acknowledged += 1
                    break
                self.lost += 1  # an earlier frame of ours never came back
        return result

    def frames(self, timeout: float | None = None) -> Iterator[Result]:
        """Iterate over denoised frames; stops with TimeoutError when none comes within ``timeout``."""
        while True:
            yield self.receive(timeout)

    def stats(self, timeout: float | None = None) -> StatsMessage:
        """The next statistics message (published twice a second)."""
        sock = self._socket("stats")
        self._wait(sock, timeout, zmq.POLLIN, "statistics")
        return json.loads(sock.recv_multipart()[1])

    # --- control -------------------------------------------------------------------------------------
    def control(self, cmd: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Send a control command (``status``, ``swap``, ``shutdown``); returns the reply,
        raising RuntimeError when it says ``ok: false``."""
        parts = self._exchange("control", [json.dumps({"cmd": cmd, **args}).encode()], timeout, f"reply to {cmd!r}")
        reply = json.loads(parts[0])
        if not reply.get("ok"):
            raise RuntimeError(f"server refused {cmd!r}: {reply.get('error')}")
        return reply

    def status(self, timeout: float | None = None) -> StatsMessage:
        return self.control("status", timeout)["status"]

    def resubscribe(self) -> None:
        """Subscribe again on a new socket: a SUB socket that reconnects to a restarted server does not send
        its subscription again (measured with libzmq 4.3), so it would never get another frame."""
        sock = self._sockets.pop("output", None)
        if sock is not None:
            sock.close(linger=0)
        self._socket("output")

    def wait_subscribed(self, n: int = 1, timeout: float | None = None) -> None:
        """Connect the output and wait until the server counts ``n`` frame subscribers (subscribing again
        each second it does not: after a server restart)."""
        self.subscribe()
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        again = time.monotonic() + 1.0
        while self.status(timeout=t)["subscribers"] < n:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"the server saw fewer than {n} subscribers within {t:g} s")
            if now > again:
                self.resubscribe()
                again = now + 1.0
            time.sleep(0.01)


class StatsSubscriber:
    """A server's stats socket read the way every watcher reads it (the dashboard, the viewer and its napari
    widget): :meth:`messages` takes what has arrived, keeps each well-formed stats message and counts the rest
    (``bad``). ``address`` not a ZeroMQ address: ValueError. ``keys``: CURVE, for a server with keys."""

    def __init__(self, address: str, keys: ClientKeys | None = None, ctx: zmq.Context | None = None,
                 hwm: int = 4, buffer_bytes: int | None = None) -> None:
        self.address = address
        self.bad = 0
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.Context()
        self.socket = self._ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        if buffer_bytes is not None:
            self.socket.setsockopt(zmq.RCVBUF, buffer_bytes)
        if keys is not None:
            keys.apply(self.socket)
        self.socket.setsockopt(zmq.SUBSCRIBE, TOPIC_STATS)
        try:
            self.socket.connect(address)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"expected a ZeroMQ address such as tcp://127.0.0.1:5558, got {address!r} "
                             f"({exc.strerror})") from None

    def messages(self, timeout: float = 0.0) -> list[StatsMessage]:
        """Every stats message that has arrived (waiting up to ``timeout`` s for the first), oldest first."""
        out: list[StatsMessage] = []
        if not self.socket.poll(int(timeout * 1000)):
            return out
        while True:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            message = self.decode(parts)
            if message is None:
                self.bad += 1
            else:
                out.append(message)

    @staticmethod
    def decode(parts: list[bytes]) -> StatsMessage | None:
        """A stats message's JSON object, None for anything else (another topic, other parts, not JSON)."""
        if len(parts) != 2 or parts[0] != TOPIC_STATS:
            return None
        try:
            data = json.loads(parts[1])
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None  # type: ignore[return-value]

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_ctx:
            self._ctx.term()
