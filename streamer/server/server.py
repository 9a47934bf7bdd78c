"""The ZeroMQ denoising server (``n2n serve``): the parts around one poll loop.

One thread runs one loop over six sockets (:class:`~streamer.endpoints.Endpoints`): frames pushed to ``input``,
requests on ``request``, commands on ``control``; denoised frames out on ``output`` (any number of subscribers),
statistics on ``stats``, raw | denoised pairs on ``view`` (lossy, only while a viewer subscribes). No locks, no
per-frame threads: the engine is the only thing that takes time, and ZeroMQ's I/O thread moves the bytes. The loop
dispatches ``{socket: handler}``; the parts hold the rest: :mod:`.sockets` and :mod:`.peers` (who listens),
:mod:`.intake` (reading, the live queue where the newest frame wins or the lossless one that applies backpressure,
the K-frame histories), :mod:`.outlet` (sending; lossless waits on slow subscribers, serving the other sockets
meanwhile), :mod:`.control`, :mod:`.swap`, :mod:`.finetune`, :mod:`.stats`. Bad input never stops the loop: an
error reply or notice, a counter, a log line.

It serves a model set (:class:`~streamer.core.modelset.ModelSet`, :mod:`.routes`): a model per channel, each loaded
once with its own frame histories; a frame goes to its channel's model, and a frame whose channel has none goes back
raw, flagged ``raw:no_model``. A model folder is a set of one, served as it always was.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..core.messages import StatsMessage
from ..core.modelset import NO_MODEL_FLAG, ModelSet
from ..denoiser import Denoiser, Timings
from ..protocol import TOPIC_STATS, Message, ProtocolError
from .config import ServeConfig
from .control import Control
from .finetune import FinetuneLink
from .intake import HEADER_BYTES, Intake, LiveInput, Streams
from .outlet import Outlet
from .peers import Peers
from .routes import Lane, Routes
from .sockets import Sockets
from .stats import ServerStats
from .swap import Swaps, load_denoiser

__all__ = ["Server"]

log = logging.getLogger("n2n.streamer")

REQUESTS_PER_TURN = 64
"""Requests answered before the loop looks at the input again: waiting callers first, they block on us."""


class Server:
    """Denoise frames arriving over ZeroMQ. ``start()`` binds and compiles, ``serve_forever()`` runs until
    :meth:`stop` (any thread), a ``shutdown`` command, or a signal handled by the caller.

    ``models``: a model folder or zoo package (one model for every frame, as ever), a ``models.yaml`` file, a
    ``CHANNEL=FOLDER`` text or a :class:`ModelSet` (a model per channel; see :mod:`.routes`). ``denoiser``: the
    first model of the set, already loaded. ``finetune_worker``: the command that runs the fine-tuning worker
    (``finetune.enabled``; see :mod:`streamer.server.finetune`)."""

    def __init__(self, models: str | Path | ModelSet, config: ServeConfig | None = None,
                 denoiser: Denoiser | None = None, finetune_worker: Sequence[str] | None = None) -> None:
        self.config = config or ServeConfig()
        self.model_set = models if isinstance(models, ModelSet) else ModelSet.parse(models)
        specs = self.model_set.models
        self.stats = ServerStats(self.config.latency_window)
        self.routes = Routes(self.model_set, self._load(specs, denoiser), self.config, self.stats)
        self._models_root = Path(self.config.models_root or Path(specs[0]).resolve().parent).resolve()
        """Fixed at start: a swapped-in model (a package unpacked into the cache) does not move it."""
        self.finetune: FinetuneLink | None = None
        self._finetune_worker = finetune_worker
        self._ctx = zmq.Context()
        self._stop = threading.Event()
        self._closed = False
        self._next_stats = 0.0
        self.sockets = Sockets(self._ctx, self.config, self.denoiser.card.shape_hint)
        self.peers = Peers(self.sockets, self.stats)
        self._poller = zmq.Poller()
        self.outlet = Outlet(self.config, self.sockets, self.peers, self.stats, self._stop, self._wait_turn)
        self.intake = Intake(self.config, self.stats, self.outlet.reject, self.outlet.complain)
        self.control: Control | None = None
        self.swaps = Swaps(self, self._poller)
        self._handlers: dict[zmq.Socket, Callable[[], None]] = {}
        self.live_input: LiveInput | None = None
        """Live mode: the thread that reads the input as frames arrive, into a queue bounded in bytes."""
        self._input_key: Any = None  # what the poller reports for the input: its socket, or the live input's fd

    def _load(self, specs: list[str], first: Denoiser | None) -> list[Denoiser]:
        """One Denoiser per distinct model of the set (``first``: the first's, already loaded); on a failure the
        ones loaded already are closed."""
        loaded: list[Denoiser] = [] if first is None else [first]
        try:
            for spec in specs[len(loaded):]:
                loaded.append(load_denoiser(spec, self.config))
        except BaseException:
            for den in loaded[1 if first is not None else 0:]:
                den.close()
            raise
        return loaded

    @property
    def denoiser(self) -> Denoiser:
        """The first model of the set (the only one of a one-model server): what the one-model fields of the
        status describe, what a swap replaces and fine-tuning trains."""
        return self.routes.primary.denoiser

    @property
    def streams(self) -> Streams:
        """The first model's frame histories (each model of a set has its own: ``routes.lanes[i].streams``)."""
        return self.routes.primary.streams

    @property
    def endpoints(self) -> dict[str, str]:
        """The bound addresses (a ``:*`` port resolved to the one the system gave); empty before :meth:`start`."""
        return self.sockets.endpoints

    # --- life cycle --------------------------------------------------------------------------------------------
    def start(self, warmup_shape: tuple[int, int] | None = None) -> dict[str, str]:
        """Bind the sockets and compile the engine for the expected frame shape; return the bound addresses."""
        if self.sockets.socks:
            return self.endpoints
        cfg = self.config
        try:
            self.sockets.open()
            if cfg.finetune.enabled:
                if not self.routes.single:
                    raise ValueError(f"finetune trains one model; this server serves a model set "
                                     f"({self.routes.describe()}): serve one model to fine-tune it")
                if cfg.averaged > 1:
                    raise ValueError(f"finetune trains on frames as single readouts; these are averaged over "
                                     f"{cfg.averaged} (--averaged): serve them without --finetune")
                self.finetune = FinetuneLink.for_model(self._ctx, self.denoiser, cfg.finetune, self._finetune_worker)
        except Exception:
            self.close()
            raise
        s = self.sockets
        self.control = Control(s["control"], self._poller, cfg, self.stats, self, self.outlet.complain)
        # in this order each turn: commands, connections (then subscriptions count by peer), viewers, the worker,
        # then waiting callers
        self._handlers = {s["control"]: self.control.on_message}
        if s.monitor is not None:
            self._handlers[s.monitor] = self.peers.on_connection
        for mon in s.auth_monitors:
            self._handlers[mon] = functools.partial(self.peers.on_handshake_failed, mon)
        if s.view_monitor is not None:
            self._handlers[s.view_monitor] = self.peers.on_view_connection
        self._handlers[s["output"]] = self.peers.on_output
        self._handlers[s["view"]] = self.peers.on_view
        if self.finetune is not None:
            self._handlers[self.finetune.status_socket] = self._on_finetune
        self._handlers[s["request"]] = self._on_requests
        if cfg.mode == "live":
            self.live_input = LiveInput(s["input"], cfg.input_buffer_bytes, cfg.max_message_bytes + HEADER_BYTES)
            self._input_key = self.live_input.fileno()
        else:
            self._input_key = s["input"]
        for sock in [*self._handlers, self._input_key]:
            self._poller.register(sock, zmq.POLLIN)
        if self.live_input is not None:
            self.live_input.start()
        for lane in self.routes.lanes:
            den = lane.denoiser
            shape = warmup_shape or den.card.shape_hint
            if shape is not None:
                t0 = time.perf_counter()
                den.prepare(shape)
                log.info("compiled %s for %dx%d in %.1f s (%s)%s", den.engine.name, *shape, time.perf_counter() - t0,
                         den.engine.precision, "" if self.routes.only is not None else
                         f": {den.card.name} for {', '.join(lane.channels)}")
        return self.endpoints

    def stop(self) -> None:
        """Ask the loop to end (safe from any thread or a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Close every socket at once (linger 0), the fine-tuning worker, the ZeroMQ context and the engine."""
        if self._closed:
            return
        self._closed = True
        if self.live_input is not None:
            self.live_input.close()  # its thread ends before its socket closes
        self.sockets.close()
        if self.finetune is not None:
            self.finetune.close()
        self.swaps.close()
        self._ctx.term()
        for lane in self.routes.lanes:
            lane.denoiser.close()

    def serve_forever(self) -> None:
        """Run the loop until stopped, then close everything."""
        self.start()
        try:
            self._loop()
        finally:
            self.close()

    # --- the loop ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        cfg = self.config
        self._next_stats = time.monotonic() + cfg.stats_interval_s
        what = self.denoiser.card.name if self.routes.only is not None else f"a model set ({self.routes.describe()})"
        log.info("serving %s (%s mode) on %s", what, cfg.mode, self.endpoints["input"])
        self.sockets.log_bounds()
        queue = self.intake.queue
        while not self._stop.is_set():
            wait_ms = 0 if queue else max(0, min(100, int((self._next_stats - time.monotonic()) * 1000)))
            events = self._turn(wait_ms)
            if self._input_key in events:
                self._drain_input()
            if queue and not self._stop.is_set():
                batch = self.intake.take(self.routes)
                if len(batch) > 1:
                    self._process_batch(batch)
                else:
                    self._process(batch[0], None)
        self._wind_down()

    def _turn(self, wait_ms: int, swaps: bool = True) -> dict[zmq.Socket, int]:
        """Poll once (up to ``wait_ms``), run the handler of every socket but the input that has something, take a
        finished swap over (``swaps``), publish the stats when due; the events (the input's is the caller's)."""
        events = dict(self._poller.poll(wait_ms))
        for sock, handler in self._handlers.items():
            if sock in events:
                handler()
        if swaps and self.swaps.done_in(events):
            self.swaps.finish()
        if time.monotonic() >= self._next_stats:
            self._publish_stats()
        return events

    def _wait_turn(self, wait_ms: int) -> None:
        """A turn of the lossless wait (a frame in hand, its subscriber with no room): the loop's handlers, but not
        the input (it has frames waiting: the poll would never wait) nor a finished swap (a new model takes over
        between two frames, not in the middle of one's delivery or of a batch)."""
        held = [self._input_key, *([self.swaps.current.done] if self.swaps.current is not None else [])]
        for sock in held:
            self._poller.unregister(sock)
        try:
            self._turn(wait_ms, swaps=False)
        finally:
            for sock in held:
                self._poller.register(sock, zmq.POLLIN)

    def _drain_input(self) -> None:
        self.intake.drain(self.sockets["input"], self.routes, self.live_input)

    def _on_requests(self) -> None:
        for _ in range(REQUESTS_PER_TURN):
            got = self.intake.request(self.sockets["request"], self.routes)
            if got is False:
                return
            if got is not True:
                self._process(*got)

    def _wind_down(self) -> None:
        """After the loop: a swap's caller answered (its model closed), the frames accepted in lossless mode
        denoised, the last stats published."""
        self.swaps.abandon()
        if self.live_input is not None:  # what its thread read and the loop did not take: counted, not lost
            self.live_input.close()
            waiting, evicted = self.live_input.take()
            if waiting or evicted:
                self.stats.on_received(len(waiting) + evicted)
                if evicted:
                    self.stats.on_dropped(evicted)
                if waiting:
                    self.stats.on_dropped(len(waiting), "stopping")
        queue = self.intake.queue
        if self.config.mode == "lossless" and queue:
            log.info("finishing %d frames already accepted before stopping", len(queue))
            while queue:
                self._process(queue.popleft(), None)
        st = self.stats
        log.info("stopped: %d frames in, %d out, %d dropped, %d errors", st.frames_in, st.frames_out, st.drops,
                 sum(st.errors.values()))
        self._publish_stats()

    # --- denoising ---------------------------------------------------------------------------------------------
    def _process_batch(self, msgs: list[Message]) -> None:
        """Frames of one model (:meth:`Intake.take`), as one engine batch."""
        lane = self.routes.lane(msgs[0])
        assert lane is not None  # a frame no model serves is never batched
        den = lane.denoiser
        t = Timings()
        previous = [lane.streams.previous(m, None) for m in msgs]  # in order: each frame is history for the next
        try:
            outs = den.batch([m.pixels for m in msgs], t, previous)
        except Exception as exc:  # the batch shape failed (compile, memory): the frames may still go one by one
            log.warning("denoising a batch of %d frames (seq %s..%s) failed (%s: %s); denoising them one by one",
                        len(msgs), msgs[0].seq, msgs[-1].seq, type(exc).__name__, exc)
            for m, p in zip(msgs, previous):
                self._process(m, None, p)
            return
        flags = self._flags(den, len(msgs))
        self.stats.batched_frames += len(msgs)
        for m, out, f in zip(msgs, outs, flags):
            self._deliver(m, None, out, t, f, lane)

    def _process(self, msg: Message, envelope: list[Any] | None, previous: list[np.ndarray] | None = None) -> None:
        lane = self.routes.lane(msg)
        if lane is None:
            self._pass_raw(msg, envelope)
            return
        den = lane.denoiser
        if lane is self.routes.primary:
            self.swaps.sample = msg.pixels  # the last frame denoised: calibrates a swapped-in model
        t = Timings()
        if previous is None:
            previous = lane.streams.previous(msg, envelope)
        try:
            out = den(msg.pixels, t, previous)
        except Exception as exc:  # an engine failure must not take the server down
            log.exception("denoising frame seq=%s failed", msg.seq)
            self.outlet.reject(ProtocolError("engine_error", f"denoising failed: {type(exc).__name__}: {exc}",
                                             msg.seq), envelope)
            return
        self._deliver(msg, envelope, out, t, self._flags(den, 1)[0], lane)

    def _pass_raw(self, msg: Message, envelope: list[Any] | None) -> None:
        """A frame of a channel the set has no model for: sent back as it came (its pixels, its dtype), flagged
        ``raw:no_model``, counted by channel; it keeps no history."""
        self.routes.no_model(msg)
        now = time.time_ns()
        self.outlet.deliver(msg, envelope, msg.pixels, Timings(now, now, now, now), None, (NO_MODEL_FLAG,))

    @staticmethod
    def _flags(denoiser: Denoiser, n: int) -> list[tuple[str, ...]]:
        """What ``denoiser``'s checks said of the ``n`` frames it just returned, in order (its ``last_flags``):
        ``()`` for a frame served as checked, else e.g. ``("float_path",)`` or ``("raw:output_range",)`` (see
        :mod:`streamer.denoiser`). A Denoiser without them (or with a count that does not match) flags nothing."""
        last = getattr(denoiser, "last_flags", None)
        if not isinstance(last, list | tuple) or len(last) != n:
            return [()] * n
        return [tuple(str(f) for f in flags) for flags in last]

    def _deliver(self, msg: Message, envelope: list[Any] | None, out: np.ndarray, t: Timings,
                 flags: tuple[str, ...], lane: Lane) -> None:
        if self.outlet.deliver(msg, envelope, out, t, lane.denoiser, flags) and self.finetune is not None \
                and envelope is None and lane is self.routes.primary:
            self.finetune.offer(msg)

    # --- models: swaps, fine-tuning (what Control and the fine-tuning link ask for; the work is .swap's) --------
    @property
    def swapping(self) -> bool:
        return self.swaps.current is not None

    @property
    def engine_name(self) -> str:
        return self.denoiser.engine.name

    @property
    def swap_refusal(self) -> str | None:
        """Why ``swap`` is refused on this server (None: it is not): a swap replaces the one model served."""
        if self.routes.single:
            return None
        return f"swap serves one model; this server serves a model set ({self.routes.describe()}): restart it " \
               "with the new set"

    @property
    def models_root(self) -> Path:
        """Where ``swap`` takes model folders from (``models_root``, else the parent of the model folder or package
        served at start: fixed, so a swap to a package, unpacked in the cache, does not move it)."""
        return self._models_root

    def begin_swap(self, model_dir: Path, engine: str | None, reply: bool = True) -> None:
        self.swaps.begin(model_dir, engine, reply)

    def _on_finetune(self) -> None:
        """The worker's status; its candidate is prepared off the loop and swapped in like a control swap."""
        assert self.finetune is not None
        candidate = self.finetune.poll()
        if candidate is not None:
            self.swaps.candidate(Path(candidate))

    # --- stats -------------------------------------------------------------------------------------------------
    def status(self) -> StatsMessage:
        """The stats message: the counters, and what serves. ``model``, ``engine``, ``precision``, ``device``,
        ``shapes``: the first model of the set's (the only one's); ``models``: each channel the set names (``*``:
        the default, any other channel) → its model, engine, precision and K; ``model_set``: the routing in one
        line; ``no_model`` (from the counters): frames passed through raw, by channel."""
        info = self.denoiser.info()
        extra = {"finetune": self.finetune.snapshot()} if self.finetune is not None else {}
        return self.stats.snapshot(**extra, mode=self.config.mode, subscribers=self.peers.subscribers,
                                   viewers=self.peers.viewers, engine=info["engine"], precision=info["precision"],
                                   precision_note=info["precision_note"], device=info["device"],
                                   model=info["model"], shapes=info["shapes"], endpoints=self.endpoints,
                                   models=self.routes.info(), model_set=self.routes.describe(),
                                   **self._input_bytes())

    def _input_bytes(self) -> dict[str, int]:
        """Live mode: the input's byte budget, what waits in it now and the most that waited at once."""
        pump = self.live_input
        if pump is None:
            return {}
        return {"input_budget_bytes": pump.budget_bytes, "input_queued_bytes": pump.queued_bytes,
                "input_peak_bytes": pump.peak_bytes}

    def _publish_stats(self) -> None:
        self._next_stats = time.monotonic() + self.config.stats_interval_s
        if self.finetune is not None:
            self._on_finetune()  # also notices a worker that ended without a word
        try:
            self.sockets["stats"].send_multipart([TOPIC_STATS, json.dumps(self.status()).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass
