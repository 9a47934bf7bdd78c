"""The server's six sockets and their options: kinds, high-water marks, message size limits, CURVE, the monitors
that count peers and refused handshakes, and the memory bound the configuration implies."""

from __future__ import annotations

import errno
import logging

import zmq

from ..security import CurveServer, is_loopback
from .config import ServeConfig
from .intake import HEADER_BYTES

__all__ = ["HANDSHAKE_FAILED", "KINDS", "Sockets"]

log = logging.getLogger("n2n.streamer")

KINDS = {"input": zmq.PULL, "output": zmq.XPUB, "request": zmq.ROUTER, "stats": zmq.PUB, "control": zmq.REP,
         "view": zmq.XPUB}
"""Each socket's ZeroMQ kind, in the order of :class:`~streamer.endpoints.Endpoints`."""
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
VIEW_HWM = 2
"""Messages queued for one viewer at most: a viewer that falls behind skips to the newest."""
LIVE_INPUT_HWM = 2
"""Live mode: messages ZeroMQ queues at the input per producer (a thread keeps it drained: what arrived waits in
the server's own queue, bounded in bytes by ``input_buffer_bytes``)."""
VIEW_SOCKET_BUFFER = 256 * 1024
"""Bytes: the kernel's send buffer of the view socket (frames must not queue there instead)."""


class Sockets:
    """Bind every socket of ``config`` in ``ctx`` (:meth:`open`); ``shape_hint`` (the model's training frame size)
    sizes the live input's queue. ``endpoints`` are the bound addresses (``:*`` resolved)."""

    def __init__(self, ctx: zmq.Context, config: ServeConfig, shape_hint: tuple[int, int] | None) -> None:
        self.ctx = ctx
        self.config = config
        self.shape_hint = shape_hint
        self.socks: dict[str, zmq.Socket] = {}
        self.endpoints: dict[str, str] = {}
        self.curve: CurveServer | None = None
        self.monitor: zmq.Socket | None = None
        """The output's connections (and, with CURVE, its refused handshakes); None on inproc."""
        self.view_monitor: zmq.Socket | None = None
        """The view's connections (and, with CURVE, its refused handshakes); None on inproc."""
        self.auth_monitors: list[zmq.Socket] = []
        """The other sockets' refused handshakes (CURVE)."""

    def __getitem__(self, name: str) -> zmq.Socket:
        return self.socks[name]

    def open(self) -> dict[str, str]:
        """Bind every socket (refusing an address other machines reach without CURVE keys or ``insecure``);
        everything opened is closed again on any error."""
        cfg = self.config
        exposed = [f"{name} {getattr(cfg.endpoints, name)}" for name in KINDS
                   if not is_loopback(getattr(cfg.endpoints, name))]
        if exposed and cfg.curve_keys is None and not cfg.insecure:
            raise OSError(f"binding {', '.join(exposed)} makes the server reachable from other machines: give "
                          "CURVE keys (curve_keys, made by `n2n keys DIR`) or, knowingly, insecure: true")
        if cfg.curve_keys is not None:
            self.curve = CurveServer(self.ctx, cfg.curve_keys)
            log.info("CURVE on: clients let in from %s/allowed (%s)", cfg.curve_keys, ", ".join(self.curve.allowed))
        elif exposed:
            log.warning("INSECURE: %s reachable from other machines without authentication: anyone who reaches "
                        "them can send and read frames and use the control socket", ", ".join(exposed))
        try:
            for name, kind in KINDS.items():
                self._open(name, kind)
        except Exception:
            self.close()
            raise
        return self.endpoints

    def _open(self, name: str, kind: int) -> None:
        cfg = self.config
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.socks[name] = sock
        if self.curve is not None:
            self.curve.apply(sock)
            if name not in ("output", "view") or getattr(cfg.endpoints, name).startswith("inproc://"):
                # (the output's and the view's one monitor watches their handshakes too)
                # a peer without the keys (or with keys not let in) fails its handshake: count it
                self.auth_monitors.append(sock.get_monitor_socket(HANDSHAKE_FAILED))
        if name in ("input", "request"):
            # per part (ZeroMQ has no limit on a whole message): a frame just over the limit is refused with a
            # reply (oversized, checked on the whole message as it is read), one larger cuts its sender off
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_part_bytes())
        if name == "input":
            sock.setsockopt(zmq.RCVHWM, self.input_hwm())
        if name == "output":
            sock.setsockopt(zmq.SNDHWM, 64 if cfg.mode == "lossless" else 16)
            sock.setsockopt(zmq.XPUB_NODROP, 1 if cfg.mode == "lossless" else 0)
            # every (un)subscription, duplicates included: otherwise a second subscriber to
            # 'frame' is never seen and the subscriber count stays at 1
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)
            # connections, to count subscribers by peer (one peer subscribing 1,000 times is one);
            # inproc has no connection events: there subscriptions are counted as they come
            if not cfg.endpoints.output.startswith("inproc://"):
                self.monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
                                                       | HANDSHAKE_FAILED)
        if name == "view":  # lossy, two messages deep (and a small kernel buffer, so that frames do not
            # queue there instead): a viewer never slows the server, and one behind sees the newest frames
            sock.setsockopt(zmq.SNDHWM, VIEW_HWM)
            sock.setsockopt(zmq.SNDBUF, VIEW_SOCKET_BUFFER)
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)
            if not cfg.endpoints.view.startswith("inproc://"):  # viewers by peer, as the output's subscribers
                self.view_monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
                                                            | HANDSHAKE_FAILED)
        address = getattr(cfg.endpoints, name)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            hint = ("; another server (or program) holds it: use that server (`n2n bridge --connect READY_FILE`, "
                    "`n2n dash --connect READY_FILE`, from its `n2n serve --ready-file`), stop it, or give this one "
                    "other addresses (--input-address ... --view-address, or --config)"
                    if exc.errno == errno.EADDRINUSE else "")
            raise OSError(f"cannot bind {name} socket to {address}: {exc}{hint}") from None
        self.endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def max_part_bytes(self) -> int:
        """ZeroMQ's limit on one part of a message at the input and request sockets (``MAXMSGSIZE``)."""
        return self.config.max_message_bytes + HEADER_BYTES

    def input_hwm(self) -> int:
        """Messages ZeroMQ may queue at the input, per producer: lossless, the queue's size (backpressure); live,
        :data:`LIVE_INPUT_HWM` (a thread drains it into a queue bounded in bytes)."""
        cfg = self.config
        return cfg.queue_size if cfg.mode == "lossless" else LIVE_INPUT_HWM

    def memory_bound_mb(self, producers: int = 1, parts: int = 2) -> dict[str, float]:
        """What the configuration lets the server's input hold (MiB) with ``producers`` connected, each sending
        messages of ``parts`` parts: the server's own queue (live: ``input_buffer_bytes``; lossless: ``queue_size``
        frames) and ZeroMQ's, whose ``RCVHWM`` counts whole messages of parts each up to ``MAXMSGSIZE`` (plus one
        message being assembled per producer), ZeroMQ's kernel buffers aside."""
        cfg = self.config
        own = cfg.input_buffer_bytes if cfg.mode == "live" else cfg.queue_size * cfg.max_message_bytes
        zeromq = producers * (self.input_hwm() + 1) * parts * self.max_part_bytes()
        return {"input_mb": round(own / 2**20, 1), "zeromq_mb": round(zeromq / 2**20, 1),
                "input_worst_mb": round((own + zeromq) / 2**20, 1)}

    def log_bounds(self) -> None:
        cfg, bound = self.config, self.memory_bound_mb()
        log.info("input held: %.0f MiB in the server's queue, %.0f MiB in ZeroMQ's per producer sending 2-part "
                 "messages (%d messages of parts up to %.0f MiB); engine: %d tiles or frames per call, at most %d "
                 "pixels; %d frame shapes compiled", bound["input_mb"], bound["zeromq_mb"], self.input_hwm() + 1,
                 self.max_part_bytes() / 2**20, cfg.max_batch, cfg.tile_batch_pixels, cfg.max_shapes)

    def close(self) -> None:
        """Every socket and monitor closed at once (linger 0); CURVE's authenticator stopped."""
        monitors = [m for m in (self.monitor, self.view_monitor) if m is not None] + self.auth_monitors
        if monitors:
            for sock in self.socks.values():
                sock.disable_monitor()
        for mon in monitors:
            mon.close(linger=0)
        self.monitor = self.view_monitor = None
        self.auth_monitors.clear()
        for sock in self.socks.values():
            sock.close(linger=0)
        self.socks.clear()
        if self.curve is not None:
            self.curve.stop()
            self.curve = None
