"""The control socket (REP): one JSON command in, one JSON reply out, whatever arrives (``status``, ``swap``,
``shutdown``, each allowed or not by ``control_commands``). A swap is answered when its model is ready or has
failed: until then the socket is out of the loop's poller (a REP socket takes no second command before its
reply)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import zmq

from .config import ServeConfig
from .stats import ServerStats

__all__ = ["Control", "Commands"]

log = logging.getLogger("n2n.streamer")

CONTROL_MAX_BYTES = 64 * 1024
"""A control command is a small JSON object."""


class Commands(Protocol):
    """What the commands act on (the server)."""

    def status(self) -> Any: ...

    def stop(self) -> None: ...

    def begin_swap(self, model_dir: Path, engine: str | None, reply: bool = True) -> None: ...

    @property
    def swapping(self) -> bool: ...

    @property
    def engine_name(self) -> str: ...

    @property
    def models_root(self) -> Path: ...

    @property
    def swap_refusal(self) -> str | None: ...


class Control:
    """Reads and answers the control socket ``sock`` for ``server``; ``poller`` is the loop's."""

    def __init__(self, sock: zmq.Socket, poller: zmq.Poller, config: ServeConfig, stats: ServerStats,
                 server: Commands, complain: Callable[[str, str], None]) -> None:
        self._sock = sock
        self._poller = poller
        self.config = config
        self._stats = stats
        self._server = server
        self._complain = complain
        self.deferred = False
        """A reply is owed (a swap in progress): the socket is out of the poller until it is sent."""

    def on_message(self) -> None:
        """One command in, one reply out: the whole message is always read (a REP socket that leaves parts unread
        cannot reply), and a reply that cannot be sent is counted, not raised."""
        try:
            parts = self._sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            if len(parts) != 1:
                raise ValueError(f"expected one part (a JSON object), got {len(parts)} parts")
            raw = parts[0]
            if len(raw) > CONTROL_MAX_BYTES:
                raise ValueError(f"expected at most {CONTROL_MAX_BYTES} bytes, got {len(raw)}")
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise ValueError(f"expected a JSON object, got a JSON {type(request).__name__}")
            reply = self._command(request)
            if reply is None:  # a swap: answered when its model is ready (or has failed), between two frames
                self.deferred = True
                self._poller.unregister(self._sock)
                return
        except (ValueError, UnicodeDecodeError) as exc:
            self._stats.on_error("bad_control")
            reply = {"ok": False, "error": f"bad control message: {exc}"}
        except Exception as exc:  # a failed swap etc.: say why, keep serving
            log.warning("control command failed: %s", exc)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self._send(reply)

    def reply(self, reply: dict[str, Any]) -> None:
        """The reply owed for a deferred command; the socket takes commands again."""
        if not self.deferred:
            return
        self.deferred = False
        self._poller.register(self._sock, zmq.POLLIN)
        self._send(reply)

    def _send(self, reply: dict[str, Any]) -> None:
        try:
            self._sock.send(json.dumps(reply, default=str).encode())
        except zmq.ZMQError as exc:  # the peer is gone or the socket's state is off: count it, keep serving
            self._stats.on_error("control_reply_failed")
            self._complain("control_reply_failed", f"control reply not sent ({exc})")

    def _command(self, request: dict[str, Any]) -> dict[str, Any] | None:
        cmd = request.get("cmd")
        allowed = self.config.control_commands
        if cmd in ("status", "stats", "swap", "shutdown") and (cmd if cmd != "stats" else "status") not in allowed:
            self._stats.on_error("control_refused")
            raise PermissionError(f"command {cmd!r} is turned off on this server (control_commands: "
                                  f"{', '.join(allowed) or 'none'})")
        if cmd in ("status", "stats"):
            return {"ok": True, "status": self._server.status()}
        if cmd == "shutdown":
            log.info("shutdown requested over the control socket")
            self._server.stop()
            return {"ok": True}
        if cmd == "swap":
            refusal = self._server.swap_refusal
            if refusal is not None:  # a model set: restarted with the new set, not swapped model by model
                self._stats.on_error("control_refused")
                raise PermissionError(refusal)
            model = request.get("model")
            if not isinstance(model, str):
                raise ValueError(f"swap needs 'model': a model folder path, got {model!r}")
            engine = request.get("engine")
            if engine is not None and engine not in ("auto", self.config.engine, self._server.engine_name):
                raise PermissionError(f"swap: expected the server's engine ({self._server.engine_name}) or auto, "
                                      f"got {engine!r}")
            if self._server.swapping:
                raise RuntimeError("a swap is in progress (the fine-tuning worker's candidate): try again")
            self._server.begin_swap(self._model_in_root(model), engine)
            return None  # replied to when the swap ends
        raise ValueError(f"unknown command {cmd!r}; expected one of status, swap, shutdown")

    def _model_in_root(self, model: str) -> Path:
        """A model folder for ``swap``, inside the models root (relative names are taken inside it)."""
        root = self._server.models_root
        path = (root / model).resolve()  # an absolute ``model`` replaces root here, and is checked the same
        if path != root and root not in path.parents:
            self._stats.on_error("control_refused")
            raise PermissionError(f"swap: expected a model folder inside {root} (models_root), got {model!r}")
        return path
