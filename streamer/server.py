"""The ZeroMQ denoising server (``n2n serve``).

One thread runs one loop over six sockets (see :class:`~streamer.config.Endpoints`): frames
pushed to ``input`` (PULL), synchronous requests on ``request`` (ROUTER, for REQ callers),
commands on ``control`` (REP); denoised frames go out on ``output`` (XPUB: any number of
subscribers), statistics on ``stats`` (PUB), and raw | denoised pairs on ``view`` (XPUB, lossy,
only while a viewer subscribes). No locks, no per-frame threads: on the CPU
the engine is the only thing that takes time, and ZeroMQ's own I/O thread moves the bytes.

* live mode: each turn drains everything that arrived, keeps the latest frame and counts
  the rest as dropped, so latency stays one frame deep whatever the producer does;
* lossless mode: frames are taken in order into a small queue; when it is full the server
  stops reading, ZeroMQ's high-water marks fill, and the producer's send blocks
  (backpressure). Output then blocks on slow subscribers instead of dropping.

A K-frame model (``input_frames`` > 1 in its card) denoises each frame with the frames before it, kept per
stream (``meta.stream`` in the header, one default stream without it; requests per caller and stream) by
:class:`~streamer.history.Histories`: live mode keeps in the history the frames it drops too, and a gap in
``seq``, a change of shape or dtype or a swap restarts it (``history_resets`` in the stats); a frame that moved
against its history is denoised alone (``motion_fallbacks``).

Bad input never stops the loop: it gets an error reply (request path) or an ``error``
message on the output socket (push path), a counter in the stats and a log line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from .config import ServeConfig
from .engines import create_engine
from .history import FrameHistory, Histories
from .model import ModelCard
from .pipeline import Denoiser, Timings
from .protocol import (
    PROTOCOL_VERSION,
    TOPIC_ERROR,
    TOPIC_FRAME,
    TOPIC_REPLY,
    TOPIC_STATS,
    TOPIC_VIEW,
    Message,
    ProtocolError,
    decode_frame,
    encode_error,
)
from .security import CurveServer, is_loopback
from .stats import ServerStats

__all__ = ["Server", "running_server", "load_denoiser"]

log = logging.getLogger("n2n.streamer")

_DRAIN_LIMIT = 1_000  # messages read in one turn at most (a flood cannot starve requests and control)
_CONTROL_MAX_BYTES = 64 * 1024  # a control command is a small JSON object
_INPUT_MAX_PARTS = 2  # header, pixels
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_REQUEST_MAX_PARTS = 8  # a ROUTER's routing frames, the empty delimiter, header, pixels
_VIEW_HWM = 2  # messages queued for one viewer at most: a viewer that falls behind skips to the newest
_VIEW_SOCKET_BUFFER = 256 * 1024  # bytes: the kernel's send buffer of the view socket


def load_denoiser(model_dir: str | Path, config: ServeConfig, engine: str | None = None,
                  precision: str | None = None) -> Denoiser:
    """The model card, an engine for it and the pre/post-processing around it."""
    card = ModelCard.load(model_dir)
    eng = create_engine(engine or config.engine, card, precision=precision or config.precision, device=config.device,
                        num_threads=config.num_threads, min_psnr_db=config.min_precision_psnr_db)
    return Denoiser(card, eng, config.tile_size, config.tile_overlap, config.output_dtype, max_tiles=config.max_batch,
                    max_shapes=config.max_shapes)


class Server:
    """Denoise frames arriving over ZeroMQ. ``start()`` binds and compiles, ``serve_forever()``
    runs until :meth:`stop` (any thread), a ``shutdown`` command, or a signal handled by the caller."""

    def __init__(self, model_dir: str | Path, config: ServeConfig | None = None,
                 denoiser: Denoiser | None = None) -> None:
        self.config = config or ServeConfig()
        self.denoiser = denoiser or load_denoiser(model_dir, self.config)
        self.stats = ServerStats(self.config.latency_window)
        self.endpoints: dict[str, str] = {}
        self.subscribers = 0
        self.viewers = 0  # subscriptions on the view socket
        self._ctx = zmq.Context()
        self._sockets: dict[str, zmq.Socket] = {}
        self._queue: deque[tuple[Message, list[Any] | None]] = deque()
        self._stop = threading.Event()
        self._closed = False
        self._curve: CurveServer | None = None
        self._auth_monitors: list[zmq.Socket] = []
        self._monitor: zmq.Socket | None = None
        self._peers = 0  # connected to the output
        self._subscriptions = 0  # to frames, by all peers
        self._stalled = False  # lossless: a subscriber has been past its wait; frames drop until it reads
        self._next_stats = 0.0
        self._error_logs: dict[str, int] = {}
        self._swap: _Swap | None = None  # a model being loaded and compiled off the loop
        self._sample: np.ndarray | None = None  # the last frame denoised: calibrates a swapped-in model
        self.finetune: Any = None  # the fine-tuning worker's link (finetune.enabled)
        self._warned_dtypes: set[str] = set()
        self._histories = Histories(self.denoiser.input_frames, self.config.motion_threshold, self.config.max_streams,
                                    on_reset=self._on_history_reset, on_motion=self._on_motion)

    # --- life cycle --------------------------------------------------------------------------
    def start(self, warmup_shape: tuple[int, int] | None = None) -> dict[str, str]:
        """Bind the sockets and compile the engine for the expected frame shape; return the
        bound addresses (a ``:*`` port resolved to the one the system gave)."""
        if self._sockets:
            return self.endpoints
        cfg = self.config
        hard_max = 2 * cfg.max_message_bytes + 65536
        spec = {"input": zmq.PULL, "output": zmq.XPUB, "request": zmq.ROUTER, "stats": zmq.PUB,
                "control": zmq.REP, "view": zmq.XPUB}
        exposed = [f"{name} {getattr(cfg.endpoints, name)}" for name in spec
                   if not is_loopback(getattr(cfg.endpoints, name))]
        if exposed and cfg.curve_keys is None and not cfg.insecure:
            raise OSError(f"binding {', '.join(exposed)} makes the server reachable from other machines: give "
                          "CURVE keys (curve_keys, made by `n2n keys DIR`) or, knowingly, insecure: true")
        if cfg.curve_keys is not None:
            self._curve = CurveServer(self._ctx, cfg.curve_keys)
            log.info("CURVE on: clients let in from %s/allowed (%s)", cfg.curve_keys, ", ".join(self._curve.allowed))
        elif exposed:
            log.warning("INSECURE: %s reachable from other machines without authentication: anyone who reaches "
                        "them can send and read frames and use the control socket", ", ".join(exposed))
        try:
            for name, kind in spec.items():
                sock = self._ctx.socket(kind)
                sock.setsockopt(zmq.LINGER, 0)
                if self._curve is not None:
                    self._curve.apply(sock)
                    if name != "output":  # (the output's one monitor watches its handshakes too)
                        # a peer without the keys (or with keys not let in) fails its handshake: count it
                        self._auth_monitors.append(sock.get_monitor_socket(_HANDSHAKE_FAILED))
                if name in ("input", "request"):
                    sock.setsockopt(zmq.MAXMSGSIZE, hard_max)
                if name == "input":
                    sock.setsockopt(zmq.RCVHWM, self._input_hwm())
                if name == "output":
                    sock.setsockopt(zmq.SNDHWM, 64 if cfg.mode == "lossless" else 16)
                    sock.setsockopt(zmq.XPUB_NODROP, 1 if cfg.mode == "lossless" else 0)
                    # every (un)subscription, duplicates included: otherwise a second subscriber to
                    # 'frame' is never seen and the subscriber count stays at 1
                    sock.setsockopt(zmq.XPUB_VERBOSER, 1)
                    # connections, to count subscribers by peer (one peer subscribing 1,000 times is one);
                    # inproc has no connection events: there subscriptions are counted as they come
                    if not cfg.endpoints.output.startswith("inproc://"):
                        self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
                                                                | _HANDSHAKE_FAILED)
                if name == "view":  # lossy, two messages deep (and a small kernel buffer, so that frames do not
                    # queue there instead): a viewer never slows the server, and one behind sees the newest frames
                    sock.setsockopt(zmq.SNDHWM, _VIEW_HWM)
                    sock.setsockopt(zmq.SNDBUF, _VIEW_SOCKET_BUFFER)
                    sock.setsockopt(zmq.XPUB_VERBOSER, 1)
                self._sockets[name] = sock
                address = getattr(cfg.endpoints, name)
                try:
                    sock.bind(address)
                except zmq.ZMQError as exc:
                    raise OSError(f"cannot bind {name} socket to {address}: {exc}") from None
                self.endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except Exception:
            self.close()
            raise
        if cfg.finetune.enabled:
            from .finetune import FinetuneLink

            if self.denoiser.input_frames != 1:
                self.close()
                raise ValueError(f"finetune: expected a single-frame model, got {self.denoiser.card.name} with "
                                 f"input_frames {self.denoiser.input_frames} (fine-tuning takes single-frame models)")

            run_dir = self.denoiser.card.run_dir
            out = Path(cfg.finetune.out) if cfg.finetune.out else run_dir.resolve().parent
            self.finetune = FinetuneLink(self._ctx, run_dir, cfg.finetune, out)
        shape = warmup_shape or self._shape_hint()
        if shape is not None:
            t0 = time.perf_counter()
            self.denoiser.prepare(shape)
            log.info("compiled %s for %dx%d in %.1f s (%s)", self.denoiser.engine.name, *shape,
                     time.perf_counter() - t0, self.denoiser.engine.precision)
        return self.endpoints

    def _input_hwm(self) -> int:
        """Messages ZeroMQ may queue at the input: lossless, the queue's size (backpressure); live, as many as
        fit ``input_buffer_bytes`` at the expected frame size, 16 to 1000 (room to reach the newest frame)."""
        cfg = self.config
        if cfg.mode == "lossless":
            return cfg.queue_size
        # live mode must reach the newest frame each turn, so it needs room for the frames a fast camera queues:
        # as many as the byte budget holds at the expected frame size (the model's shape hint, 16-bit), 16 to 1000
        hint = self._shape_hint() or (2048, 2048)
        return int(max(16, min(1000, cfg.input_buffer_bytes // (hint[0] * hint[1] * 2))))

    def memory_bound_mb(self) -> dict[str, float]:
        """What the configuration lets the server's input hold (MiB): the messages queued by ZeroMQ and by the
        server, at the expected frame size (the budget) and, at worst, each at the largest message allowed
        (ZeroMQ's kernel buffers aside)."""
        cfg = self.config
        queued = self._input_hwm() + (cfg.queue_size if cfg.mode == "lossless" else 1)
        hint = self._shape_hint() or (2048, 2048)
        return {"input_mb": round(queued * hint[0] * hint[1] * 2 / 2**20, 1),
                "input_worst_mb": round(queued * cfg.max_message_bytes / 2**20, 1)}

    def _shape_hint(self) -> tuple[int, int] | None:
        return self.denoiser.card.shape_hint

    def stop(self) -> None:
        """Ask the loop to end (safe from any thread or a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Close every socket at once (linger 0) and the ZeroMQ context."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None or self._auth_monitors:
            for sock in self._sockets.values():
                sock.disable_monitor()
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None
        for mon in self._auth_monitors:
            mon.close(linger=0)
        self._auth_monitors.clear()
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if self._curve is not None:
            self._curve.stop()
            self._curve = None
        if self.finetune is not None:
            self.finetune.close()
        self._ctx.term()
        self.denoiser.engine.close()

    def serve_forever(self) -> None:
        """Run the loop until stopped, then close everything."""
        self.start()
        try:
            self._loop()
        finally:
            self.close()

    # --- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        s = self._sockets
        poller = zmq.Poller()
        for name in ("control", "request", "input", "output", "view"):
            poller.register(s[name], zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        for mon in self._auth_monitors:
            poller.register(mon, zmq.POLLIN)
        if self.finetune is not None:
            poller.register(self.finetune.status_socket, zmq.POLLIN)
        interval = self.config.stats_interval_s
        self._next_stats = time.monotonic() + interval
        log.info("serving %s (%s mode) on %s", self.denoiser.card.name, self.config.mode, self.endpoints["input"])
        bound = self.memory_bound_mb()
        log.info("input held: %.0f MiB at the expected frame size, %.0f MiB at worst (%d queued messages of up to "
                 "%.0f MiB); engine: %d tiles or frames per call; %d frame shapes compiled", bound["input_mb"],
                 bound["input_worst_mb"], self._input_hwm(), self.config.max_message_bytes / 2**20,
                 self.config.max_batch, self.config.max_shapes)
        while not self._stop.is_set():
            now = time.monotonic()
            wait_ms = 0 if self._queue else max(0, min(100, int((self._next_stats - now) * 1000)))
            if self._swap is not None:
                wait_ms = min(wait_ms, 5)  # look at the swap often; its reply waits meanwhile
                if self._swap.done.is_set():
                    if self._swap.reply:
                        poller.register(s["control"], zmq.POLLIN)
                    self._finish_swap()
            events = dict(poller.poll(wait_ms))
            if s["control"] in events:
                self._on_control()
                if self._swap is not None and self._swap.reply:  # the REP socket replies when the swap ends
                    poller.unregister(s["control"])
            if self._monitor is not None and self._monitor in events:
                self._on_connection()
            for mon in self._auth_monitors:
                if mon in events:
                    self._on_handshake_failed(mon)
            if s["output"] in events:
                self._on_subscription()
            if s["view"] in events:
                self._on_view_subscription()
            if self.finetune is not None and self.finetune.status_socket in events:
                self._on_finetune()
            if s["request"] in events:
                for _ in range(64):  # answer waiting callers first; they block on us
                    if not self._on_request():
                        break
            if s["input"] in events:
                self._drain_input()
            if self._queue and not self._stop.is_set():
                batch = self._take_batch()
                self.stats.queue_depth = len(self._queue)
                if len(batch) > 1:
                    self._process_batch(batch)
                else:
                    self._process(batch[0], None)
            if time.monotonic() >= self._next_stats:
                self._publish_stats()
        if self._swap is not None:  # its caller waits for a reply; its model must not outlive the server
            self._swap.done.wait(60)
            if self._swap.model is not None:
                self._swap.model.engine.close()
            if self._swap.reply:
                self._reply_control({"ok": False, "error": "the server stopped before the swap ended"})
            self._swap = None
        if self.config.mode == "lossless" and self._queue:
            log.info("finishing %d frames already accepted before stopping", len(self._queue))
            while self._queue:
                self._process(self._queue.popleft()[0], None)
        st = self.stats
        log.info("stopped: %d frames in, %d out, %d dropped, %d errors", st.frames_in, st.frames_out, st.drops,
                 sum(st.errors.values()))
        self._publish_stats()

    # --- input ------------------------------------------------------------------------------------
    def _decode(self, parts: list[Any]) -> Message:
        msg = decode_frame(parts, self.config.max_message_bytes, min_side=self.denoiser.min_side)
        expected = self.denoiser.card.input_dtype
        dtype = msg.pixels.dtype.name
        if expected and dtype != expected and dtype not in self._warned_dtypes:
            self._warned_dtypes.add(dtype)
            log.warning("frames arrive as %s but the model was trained on %s: check the camera's bit depth",
                        dtype, expected)
        return msg

    def _recv_bounded(self, sock: zmq.Socket, max_parts: int) -> tuple[list[Any], int]:
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

    def _drain_input(self) -> None:
        sock = self._sockets["input"]
        lossless = self.config.mode == "lossless"
        for _ in range(_DRAIN_LIMIT):
            if lossless and len(self._queue) >= self.config.queue_size:
                break  # backpressure: leave the rest in ZeroMQ's queues
            try:
                parts, count = self._recv_bounded(sock, _INPUT_MAX_PARTS)
            except zmq.Again:
                break
            self.stats.on_received()
            if count > _INPUT_MAX_PARTS:
                self._reject(ProtocolError("bad_parts", f"expected 2 message parts (JSON header, pixels), got "
                                                        f"{count}"), None)
                continue
            try:
                msg = self._decode(parts)
            except ProtocolError as exc:
                self._reject(exc, None)
                continue
            if not lossless and self._queue:
                if self.denoiser.input_frames > 1:  # not denoised, but its photons count for the next frame
                    older = self._queue[0][0]
                    self._history(older, None).skip(older.pixels, older.seq)
                self._queue.clear()  # latest frame wins
                self.stats.on_dropped()
            self._queue.append((msg, None))
        self.stats.queue_depth = len(self._queue)

    def _on_request(self) -> bool:
        sock = self._sockets["request"]
        try:
            parts, count = self._recv_bounded(sock, _REQUEST_MAX_PARTS)
        except zmq.Again:
            return False
        # envelope: routing id(s) up to and including the empty delimiter frame
        split = next((i for i, p in enumerate(parts) if len(p.buffer) == 0), None)
        if split is None:
            self.stats.on_error("bad_envelope")
            self._log_error("bad_envelope", "request without an empty delimiter frame (use a REQ or DEALER socket)")
            return True
        envelope, body = parts[: split + 1], parts[split + 1 :]
        self.stats.on_received()
        if count > _REQUEST_MAX_PARTS:  # answered (a REQ caller would otherwise wait for its timeout)
            self._reject(ProtocolError("bad_parts", f"expected 2 message parts (JSON header, pixels) after the "
                                                    f"envelope, got {count - split - 1}"), envelope)
            return True
        try:
            msg = self._decode(body)
        except ProtocolError as exc:
            self._reject(exc, envelope)
            return True
        self._process(msg, envelope)
        return True

    # --- history (K-frame models) -------------------------------------------------------------------
    def _history(self, msg: Message, envelope: list[Any] | None) -> FrameHistory:
        """The history of the frame's stream: ``meta.stream`` (any JSON value; one default stream without it);
        on the request path per caller (its routing id) as well, apart from pushed streams."""
        meta = msg.header.get("meta")
        stream = meta.get("stream") if isinstance(meta, dict) else None
        key = "" if stream is None else json.dumps(stream, separators=(",", ":"))[:256]
        if envelope is not None:
            key = f"request:{bytes(envelope[0].buffer).hex()}:{key}"
        return self._histories.get(key)

    def _previous(self, msg: Message, envelope: list[Any] | None) -> list[np.ndarray]:
        """The frames before ``msg`` in its stream that it is denoised with (K-frame models; none for K = 1),
        and ``msg`` kept as history for the next."""
        k = self.denoiser.input_frames
        if k == 1:
            return []
        hist = self._history(msg, envelope)
        short = hist.short
        previous = hist.previous(msg.pixels, msg.seq)
        hist.push(msg.pixels, msg.seq)
        self.stats.history_short += hist.short - short
        return previous

    def _on_history_reset(self, reason: str) -> None:
        self.stats.history_resets[reason] += 1

    def _on_motion(self) -> None:
        self.stats.motion_fallbacks += 1

    # --- processing -----------------------------------------------------------------------------
    def _take_batch(self) -> list[Message]:
        """The next frame, with the frames behind it when batching pays: lossless mode, a full batch of
        ``max_batch`` small frames of one shape and dtype waiting (partial batches would compile new
        shapes for little gain)."""
        first = self._queue.popleft()[0]
        cfg = self.config
        n = min(cfg.max_batch, cfg.queue_size)  # a batch is made of frames already waiting in the queue
        if (cfg.mode != "lossless" or n < 2 or len(self._queue) < n - 1
                or first.pixels.size > cfg.batch_max_pixels):
            return [first]
        same = [m for m, _ in list(self._queue)[: n - 1]
                if m.pixels.shape == first.pixels.shape and m.pixels.dtype == first.pixels.dtype]
        if len(same) < n - 1:
            return [first]
        for _ in range(n - 1):
            self._queue.popleft()
        return [first, *same]

    def _process_batch(self, msgs: list[Message]) -> None:
        t = Timings()
        previous = [self._previous(m, None) for m in msgs]  # in order: each frame is history for the next
        try:
            outs = self.denoiser.batch([m.pixels for m in msgs], t, previous)
        except Exception as exc:  # the batch shape failed (compile, memory): the frames may still go one by one
            log.warning("denoising a batch of %d frames (seq %s..%s) failed (%s: %s); denoising them one by one",
                        len(msgs), msgs[0].seq, msgs[-1].seq, type(exc).__name__, exc)
            for m, p in zip(msgs, previous):
                self._process(m, None, p)
            return
        self.stats.batched_frames += len(msgs)
        for m, out in zip(msgs, outs):
            self._deliver(m, None, out, t)

    def _process(self, msg: Message, envelope: list[Any] | None, previous: list[np.ndarray] | None = None) -> None:
        self._sample = msg.pixels
        t = Timings()
        if previous is None:
            previous = self._previous(msg, envelope)
        try:
            out = self.denoiser(msg.pixels, t, previous)
        except Exception as exc:  # an engine failure must not take the server down
            log.exception("denoising frame seq=%s failed", msg.seq)
            self._reject(ProtocolError("engine_error", f"denoising failed: {type(exc).__name__}: {exc}", msg.seq),
                         envelope)
            return
        self._deliver(msg, envelope, out, t)

    def _deliver(self, msg: Message, envelope: list[Any] | None, out: np.ndarray, t: Timings) -> None:
        h = msg.header
        stages = {"received": msg.received_ns, "start": t.start, "preprocessed": t.preprocessed,
                  "inferred": t.inferred, "postprocessed": t.postprocessed}
        header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": "frame", "seq": msg.seq,
                                  "shape": list(out.shape), "dtype": out.dtype.name, "ts_ns": h.get("ts_ns"),
                                  "meta": h.get("meta", {}), "engine": self.denoiser.engine.name,
                                  "model": self.denoiser.card.name}
        sent = time.time_ns()
        header["stages"] = {"received": msg.received_ns, "preprocessed": t.preprocessed, "inferred": t.inferred,
                            "sent": sent}
        head = json.dumps(header, separators=(",", ":")).encode()
        body = np.ascontiguousarray(out).data
        if envelope is not None:
            self._sockets["request"].send_multipart([*envelope, head, body], copy=False)
        if self.viewers:
            self._publish_view(msg, header, body)
        # a request's result goes back to its caller; on the output it is a 'reply' (viewers may watch it),
        # never a 'frame': a consumer of the stream must not take it for the result of a frame it pushed
        if envelope is not None:  # viewers may watch replies, never worth waiting for: the caller has its own
            self._publish_now([TOPIC_REPLY, head, body])
        else:
            dropped = self._send_output([TOPIC_FRAME, head, body])
            if dropped is None and self.subscribers == 0 and self.viewers == 0:
                dropped = "no_subscriber"  # published to nobody: not delivered
            if dropped is not None:
                self.stats.on_dropped(reason=dropped)  # denoised, never delivered
                return
        stages["sent"] = sent
        self.stats.on_done(stages, h.get("ts_ns"), request=envelope is not None)
        if self.finetune is not None and envelope is None:
            self.finetune.offer(msg)

    def _publish_view(self, msg: Message, header: dict[str, Any], body: Any) -> None:
        """Raw and denoised pixels of one frame to the viewers. Never waits: the view socket is lossy, a viewer with
        two messages queued misses this one (it sees the gap in ``seq``)."""
        raw = msg.pixels
        head = json.dumps({**header, "raw": {"shape": list(raw.shape), "dtype": raw.dtype.name}},
                          separators=(",", ":")).encode()
        self._sockets["view"].send_multipart([TOPIC_VIEW, head, np.ascontiguousarray(raw).data, body],
                                             zmq.NOBLOCK, copy=False)
        self.stats.view_frames += 1

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
        s = self._sockets
        poller = zmq.Poller()  # (not the output: an XPUB always says it can send)
        for name in ("control", "request"):
            poller.register(s[name], zmq.POLLIN)
        timeout = self.config.slow_subscriber_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if self._stop.is_set():
                return "stopping"
            events = dict(poller.poll(10))
            if s["control"] in events and (self._swap is None or not self._swap.reply):
                self._on_control()
            if s["request"] in events:
                self._on_request()
            if self._publish_now(parts):
                return None
            if time.monotonic() >= self._next_stats:
                self._publish_stats()
        self._stalled = True  # from now on drop at once, until a frame goes through again
        log.warning("a subscriber took no frame for %.1f s: dropping frames until it reads again", timeout)
        return "slow_subscriber"

    def _reject(self, exc: ProtocolError, envelope: list[Any] | None) -> None:
        self.stats.on_error(exc.code)
        self._log_error(exc.code, f"seq={exc.seq}: {exc}")
        head = encode_error(exc.code, str(exc), exc.seq)
        if envelope is not None:  # the caller gets it; the output's consumers must not take it for theirs
            self._sockets["request"].send_multipart([*envelope, head, b""], copy=False)
            return
        try:
            self._sockets["output"].send_multipart([TOPIC_ERROR, head], zmq.NOBLOCK)
        except zmq.Again:  # errors are never worth blocking for; the notice lost is counted
            self.stats.notices_dropped += 1

    def _log_error(self, code: str, text: str) -> None:
        n = self._error_logs[code] = self._error_logs.get(code, 0) + 1
        if n <= 10 or n % 100 == 0:
            log.warning("bad input (%s, #%d): %s", code, n, text)

    # --- control, subscriptions, stats ---------------------------------------------------------
    def _subscriptions_to(self, name: str, topic: bytes, count: int) -> int:
        """``count`` moved by the (un)subscriptions to ``topic`` waiting on the XPUB socket ``name`` ('' or a prefix of
        the topic counts; XPUB also passes up any other message an XSUB peer sends, which must not move it)."""
        sock = self._sockets[name]
        while True:
            try:
                event = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return count
            if event[:1] in (b"\x00", b"\x01") and topic.startswith(event[1:]):
                count = max(0, count + (1 if event[:1] == b"\x01" else -1))
            elif len(event) > 256:
                self.stats.on_error("bad_subscription")

    def _on_subscription(self) -> None:
        self._subscriptions = self._subscriptions_to("output", TOPIC_FRAME, self._subscriptions)
        self._count_subscribers()

    def _on_view_subscription(self) -> None:
        """Viewers: (un)subscriptions to ``view`` on the view socket (a disconnected viewer's are withdrawn)."""
        self.viewers = self._subscriptions_to("view", TOPIC_VIEW, self.viewers)

    def _on_connection(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        assert self._monitor is not None
        while self._monitor.poll(0):
            kind = recv_monitor_message(self._monitor)["event"]
            if kind == zmq.EVENT_ACCEPTED:
                self._peers += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                self._peers = max(0, self._peers - 1)
            elif kind & _HANDSHAKE_FAILED:
                self.stats.on_error("auth_refused")
        self._count_subscribers()

    def _on_handshake_failed(self, mon: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while mon.poll(0):
            recv_monitor_message(mon)
            self.stats.on_error("auth_refused")

    def _count_subscribers(self) -> None:
        """Subscribers to frames, by peer: subscriptions, but never more than the peers connected."""
        peers = self._peers if self._monitor is not None else self._subscriptions
        self.subscribers = min(self._subscriptions, peers)

    def _on_control(self) -> None:
        """One command in, one reply out, whatever arrives: the whole message is always read (a REP socket
        that leaves parts unread cannot reply), and a reply that cannot be sent is counted, not raised."""
        sock = self._sockets["control"]
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            if len(parts) != 1:
                raise ValueError(f"expected one part (a JSON object), got {len(parts)} parts")
            raw = parts[0]
            if len(raw) > _CONTROL_MAX_BYTES:
                raise ValueError(f"expected at most {_CONTROL_MAX_BYTES} bytes, got {len(raw)}")
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise ValueError(f"expected a JSON object, got a JSON {type(request).__name__}")
            reply = self._command(request)
            if reply is None:  # a swap: answered when its model is ready (or has failed), between two frames
                return
        except (ValueError, UnicodeDecodeError) as exc:
            self.stats.on_error("bad_control")
            reply = {"ok": False, "error": f"bad control message: {exc}"}
        except Exception as exc:  # a failed swap etc.: say why, keep serving
            log.warning("control command failed: %s", exc)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self._reply_control(reply)

    def _reply_control(self, reply: dict[str, Any]) -> None:
        try:
            self._sockets["control"].send(json.dumps(reply, default=str).encode())
        except zmq.ZMQError as exc:  # the peer is gone or the socket's state is off: count it, keep serving
            self.stats.on_error("control_reply_failed")
            self._log_error("control_reply_failed", f"control reply not sent ({exc})")

    def _command(self, request: dict[str, Any]) -> dict[str, Any] | None:
        cmd = request.get("cmd")
        allowed = self.config.control_commands
        if cmd in ("status", "stats", "swap", "shutdown") and (cmd if cmd != "stats" else "status") not in allowed:
            self.stats.on_error("control_refused")
            raise PermissionError(f"command {cmd!r} is turned off on this server (control_commands: "
                                  f"{', '.join(allowed) or 'none'})")
        if cmd in ("status", "stats"):
            return {"ok": True, "status": self.status()}
        if cmd == "shutdown":
            log.info("shutdown requested over the control socket")
            self.stop()
            return {"ok": True}
        if cmd == "swap":
            model = request.get("model")
            if not isinstance(model, str):
                raise ValueError(f"swap needs 'model': a model folder path, got {model!r}")
            engine = request.get("engine")
            if engine is not None and engine not in ("auto", self.config.engine, self.denoiser.engine.name):
                raise PermissionError(f"swap: expected the server's engine ({self.denoiser.engine.name}) or auto, "
                                      f"got {engine!r}")
            if self._swap is not None:
                raise RuntimeError("a swap is in progress (the fine-tuning worker's candidate): try again")
            self._swap = _Swap(self, self._model_in_root(model), engine)
            return None  # replied to by _finish_swap
        raise ValueError(f"unknown command {cmd!r}; expected one of status, swap, shutdown")

    def _model_in_root(self, model: str) -> Path:
        """A model folder for ``swap``, inside the models root (relative names are taken inside it)."""
        root = Path(self.config.models_root or self.denoiser.card.run_dir.resolve().parent).resolve()
        path = (root / model).resolve()  # an absolute ``model`` replaces root here, and is checked the same
        if path != root and root not in path.parents:
            self.stats.on_error("control_refused")
            raise PermissionError(f"swap: expected a model folder inside {root} (models_root), got {model!r}")
        return path

    def prepare_model(self, model_dir: str | Path, engine: str | None = None) -> Denoiser:
        """Another model, loaded, checked and compiled for the frame shapes served so far (calibrated on the last
        frame served): ready to take over between two frames. Safe in any thread; the serving loop goes on."""
        current = self.denoiser.engine
        if self.config.precision == "auto" and current.precision_decided and engine in (None, "auto", current.name):
            # the precision auto chose for this server, if the new model passed its check for it (no timing runs
            # beside the serving loop); else auto again
            try:
                new = load_denoiser(model_dir, self.config, current.name, current.precision)
            except Exception as exc:
                log.info("swap: %s at %s not usable (%s): choosing again", current.name, current.precision, exc)
                new = load_denoiser(model_dir, self.config, engine)
        else:
            new = load_denoiser(model_dir, self.config, engine)
        try:
            sample = self._sample
            for shape in self.denoiser.shapes or [s for s in [self._shape_hint()] if s]:
                frame = sample if sample is not None and sample.shape == tuple(shape) else None
                new.prepare(shape, frame)
                if frame is not None:  # an engine's first calls run slower: not on the serving loop's time
                    new(frame)
                    new(frame)
        except Exception:
            new.engine.close()
            raise
        return new

    def use(self, new: Denoiser, took_s: float = 0.0) -> None:
        """Serve the next frame with ``new`` (in the loop's thread, between two frames; or before serving)."""
        old, self.denoiser = self.denoiser, new
        self._histories.reset_all("swap", new.input_frames)  # another model: frames before it start afresh
        threading.Thread(target=old.engine.close, name="n2n-close-model", daemon=True).start()  # not on the loop
        self.stats.swaps += 1
        log.info("swapped to model %s (%s, %s) prepared in %.1f s", new.card.name, new.engine.name,
                 new.engine.precision, took_s)

    def swap(self, model_dir: str | Path, engine: str | None = None) -> None:
        """Load another model and serve it from the next frame: all at once, in the caller's thread (a server not
        yet serving; the ``swap`` command prepares off the loop instead). On any error the current model stays."""
        t0 = time.perf_counter()
        self.use(self.prepare_model(model_dir, engine), time.perf_counter() - t0)

    def _finish_swap(self) -> None:
        """The swap thread has ended: take its model between two frames (or keep the old one), then reply."""
        swap, self._swap = self._swap, None
        assert swap is not None
        if swap.model is None:
            self.stats.on_error("swap_failed")
            log.warning("swap to %s failed, still serving %s: %s", swap.model_dir, self.denoiser.card.name,
                        swap.error)
            if swap.reply:
                self._reply_control({"ok": False, "error": swap.error})
            return
        self.use(swap.model, swap.seconds)
        if swap.reply:
            self._reply_control({"ok": True, "status": self.status(), "prepared_s": round(swap.seconds, 3)})
        elif self.finetune is not None:
            self.finetune.swaps += 1

    def _on_finetune(self) -> None:
        """The worker's status; its candidate is prepared off the loop and swapped in like a control swap."""
        assert self.finetune is not None
        candidate = self.finetune.poll()
        if candidate is not None:
            if self._swap is not None:
                log.info("fine-tuning candidate %s skipped: a swap is in progress", candidate)
            else:
                log.info("fine-tuning candidate %s: preparing it", candidate)
                self._swap = _Swap(self, Path(candidate), None, reply=False)

    def status(self) -> dict[str, Any]:
        info = self.denoiser.info()
        extra = {"finetune": self.finetune.snapshot()} if self.finetune is not None else {}
        return self.stats.snapshot(**extra, mode=self.config.mode, subscribers=self.subscribers, viewers=self.viewers,
                                   engine=info["engine"], precision=info["precision"],
                                   precision_note=info["precision_note"], device=info["device"],
                                   model=info["model"], shapes=info["shapes"], endpoints=self.endpoints)

    def _publish_stats(self) -> None:
        self._next_stats = time.monotonic() + self.config.stats_interval_s
        if self.finetune is not None:
            self._on_finetune()  # also notices a worker that ended without a word
        try:
            self._sockets["stats"].send_multipart([TOPIC_STATS, json.dumps(self.status()).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass


class _Swap:
    """A model loaded and compiled in a thread of its own, while the loop serves with the old one."""

    def __init__(self, server: Server, model_dir: Path, engine: str | None, reply: bool = True) -> None:
        self.model_dir = model_dir
        self.reply = reply  # a control command waits for the outcome (else: the fine-tuning worker's candidate)
        self.model: Denoiser | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(server, engine), name="n2n-swap", daemon=True).start()

    def _run(self, server: Server, engine: str | None) -> None:
        t0 = time.perf_counter()
        with suppress(OSError, AttributeError):  # below the serving loop's priority (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            self.model = server.prepare_model(self.model_dir, engine)
        except Exception as exc:  # said in the reply; the old model goes on serving
            self.error = f"{type(exc).__name__}: {exc}"
        self.seconds = time.perf_counter() - t0
        self.done.set()


@contextmanager
def running_server(model_dir: str | Path, config: ServeConfig | None = None,
                   denoiser: Denoiser | None = None, warmup_shape: tuple[int, int] | None = None,
                   ) -> Iterator[Server]:
    """A server in a background thread of this process (tests, notebooks, the bench)."""
    server = Server(model_dir, config, denoiser)
    try:
        server.start(warmup_shape)
    except Exception:
        server.close()
        raise
    thread = threading.Thread(target=server.serve_forever, name="n2n-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=30)
        if thread.is_alive():
            if sys.exc_info()[0] is not None:  # do not hide the error that is already on its way out
                log.error("server thread did not stop within 30 s")
            else:
                raise RuntimeError("server thread did not stop within 30 s")

