"""Swapping the served model without stalling: the new model is loaded, checked and compiled for the frame shapes
served so far (calibrated and warmed on the last frame) in a thread below the loop's priority while the old one
serves; the thread says it is done on a socket in the loop's poller (one end of a local socket pair: nothing of
ZeroMQ's to tear down if the server closes first), and the loop takes the new model over between two frames (the
old one is closed off the loop). A swap replaces the one model a server serves; a server of a model set (several
models, :mod:`.routes`) refuses it (see ``Server.swap_refusal``): it is restarted with the new set."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from ..denoiser import Denoiser
from .config import ServeConfig

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Swap", "Swaps", "load_denoiser", "prepare_model"]

log = logging.getLogger("n2n.streamer")


def load_denoiser(model_dir: str | Path, config: ServeConfig, engine: str | None = None,
                  precision: str | None = None) -> Denoiser:
    """The model folder's Denoiser as ``config`` serves it (``engine``, ``precision``: instead of the config's)."""
    return Denoiser.from_model_dir(model_dir, engine or config.engine, precision or config.precision,
                                   config.device, config.num_threads, config.min_precision_psnr_db, config.tile_size,
                                   config.tile_overlap, config.output_dtype, max_tiles=config.max_batch,
                                   max_shapes=config.max_shapes, retime=config.retime,
                                   max_tile_pixels=config.tile_batch_pixels, trust_code=config.trust_code,
                                   averaged=config.averaged)


def prepare_model(model_dir: str | Path, config: ServeConfig, current: Denoiser, sample: np.ndarray | None,
                  engine: str | None = None) -> Denoiser:
    """Another model, loaded, checked and compiled for the frame shapes ``current`` served (calibrated on
    ``sample``, the last frame served): ready to take over between two frames. Safe in any thread."""
    now = current.engine
    if config.precision == "auto" and now.precision_decided and engine in (None, "auto", now.name):
        # the precision auto chose for this server, if the new model passed its check for it (no timing runs
        # beside the serving loop); else auto again
        try:
            new = load_denoiser(model_dir, config, now.name, now.precision)
        except Exception as exc:
            log.info("swap: %s at %s not usable (%s): choosing again", now.name, now.precision, exc)
            new = load_denoiser(model_dir, config, engine)
    else:
        new = load_denoiser(model_dir, config, engine)
    try:
        for shape in current.shapes or [s for s in [current.card.shape_hint] if s]:
            frame = sample if sample is not None and sample.shape == tuple(shape) else None
            new.prepare(shape, frame)
            if frame is not None:  # an engine's first calls run slower: not on the serving loop's time
                new(frame)
                new(frame)
        new.counts.clear()  # (the warm-up's frames were not served)
        new.routed = 0
    except Exception:
        new.close()
        raise
    return new


class Swap:
    """A model prepared in a thread of its own (below the loop's priority) while the loop serves with the old one;
    ``done`` (a socket for the loop's poller) becomes readable when it has ended (``model`` ready, or ``error``).
    ``reply``: a control command waits for the outcome (else the fine-tuning worker's candidate)."""

    def __init__(self, model_dir: Path, config: ServeConfig, current: Denoiser, sample: np.ndarray | None,
                 engine: str | None, reply: bool = True) -> None:
        self.model_dir = model_dir
        self.reply = reply
        self.model: Denoiser | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self.done, self._signal = socket.socketpair()
        self._thread = threading.Thread(target=self._run, args=(config, current, sample, engine), name="n2n-swap",
                                        daemon=True)
        self._thread.start()

    def _run(self, config: ServeConfig, current: Denoiser, sample: np.ndarray | None, engine: str | None) -> None:
        t0 = time.perf_counter()
        with suppress(OSError, AttributeError):  # below the serving loop's priority (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            self.model = prepare_model(self.model_dir, config, current, sample, engine)
        except Exception as exc:  # said in the reply; the old model goes on serving
            self.error = f"{type(exc).__name__}: {exc}"
        self.seconds = time.perf_counter() - t0
        with suppress(OSError):  # (closed: the server stopped meanwhile, nobody waits for the outcome)
            self._signal.send(b"x")

    def finished(self, timeout: float | None = None) -> bool:
        """Wait for the thread (``timeout`` s, None: as long as it takes); whether it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """The signal sockets closed (the loop has taken the outcome, or the server is stopping)."""
        self.done.close()
        self._signal.close()


class Swaps:
    """The server's swaps, one at a time: begun by a ``swap`` command or a fine-tuning candidate, prepared off the
    loop (:class:`Swap`), taken over between two frames when its socket says it is done, answered (a command)
    or counted (a candidate)."""

    def __init__(self, server: Server, poller: zmq.Poller) -> None:
        self._server = server
        self._poller = poller
        self.current: Swap | None = None
        self.sample: np.ndarray | None = None
        """The last frame served: calibrates and warms a swapped-in model."""

    def begin(self, model_dir: Path, engine: str | None, reply: bool = True) -> None:
        """Prepare ``model_dir`` off the loop; it takes over when ready (:meth:`finish`)."""
        srv = self._server
        self.current = Swap(model_dir, srv.config, srv.denoiser, self.sample, engine, reply)
        self._poller.register(self.current.done, zmq.POLLIN)

    def candidate(self, model_dir: Path) -> None:
        """A fine-tuning candidate: swapped in like a command's model, unless a swap is in progress."""
        if self.current is not None:
            log.info("fine-tuning candidate %s skipped: a swap is in progress", model_dir)
            return
        log.info("fine-tuning candidate %s: preparing it", model_dir)
        self.begin(model_dir, None, reply=False)

    def done_in(self, events: dict[Any, int]) -> bool:
        """Whether the swap in progress has ended (its socket among the loop's poll events)."""
        return self.current is not None and self.current.done.fileno() in events

    def finish(self) -> None:
        """The swap thread has ended: take its model between two frames (or keep the old one), then reply."""
        swap, self.current = self.current, None
        assert swap is not None
        srv = self._server
        self._poller.unregister(swap.done)
        swap.finished()
        swap.close()
        if swap.model is None:
            srv.stats.on_error("swap_failed")
            log.warning("swap to %s failed, still serving %s: %s", swap.model_dir, srv.denoiser.card.name, swap.error)
            if swap.reply and srv.control is not None:
                srv.control.reply({"ok": False, "error": swap.error})
            return
        self.use(swap.model, swap.seconds)
        if swap.reply and srv.control is not None:
            srv.control.reply({"ok": True, "status": srv.status(), "prepared_s": round(swap.seconds, 3)})
        elif srv.finetune is not None:
            srv.finetune.swapped()

    def use(self, new: Denoiser, took_s: float = 0.0) -> None:
        """Serve the next frame with ``new`` (in the loop's thread, between two frames; or before serving)."""
        srv = self._server
        old = srv.routes.replace(srv.routes.primary, new)  # another model: frames before it start afresh
        threading.Thread(target=old.close, name="n2n-close-model", daemon=True).start()  # not on the loop
        srv.stats.swaps += 1
        log.info("swapped to model %s (%s, %s) prepared in %.1f s", new.card.name, new.engine.name,
                 new.engine.precision, took_s)

    def abandon(self) -> None:
        """The server stops: a swap's caller is answered, its model closed (it must not outlive the server)."""
        swap, self.current = self.current, None
        if swap is None:
            return
        swap.finished(60)
        if swap.model is not None:
            swap.model.close()
        if swap.reply and self._server.control is not None:
            self._server.control.reply({"ok": False, "error": "the server stopped before the swap ended"})
        swap.close()

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
