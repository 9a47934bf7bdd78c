"""A server in a thread of this process: what the napari widget, the tests, notebooks and the benchmarks run
(``n2n serve`` runs the loop in its main thread instead)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.modelset import ModelSet
from ..denoiser import Denoiser
from .config import ServeConfig
from .server import Server

__all__ = ["ServerThread", "running_server"]

log = logging.getLogger("n2n.streamer")


class ServerThread:
    """``make()`` a :class:`Server`, start it (binding, compiling) and serve in a daemon thread. With
    ``background=True`` the start happens in that thread too (a window stays responsive while it compiles):
    :attr:`ready` is set once it is serving or has failed (:attr:`error` says why); else :meth:`__init__` raises
    what the start raised."""

    def __init__(self, make: Callable[[], Server], warmup_shape: tuple[int, int] | None = None,
                 background: bool = False, name: str = "n2n-server") -> None:
        self.server: Server | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._stopped = threading.Event()  # asked to stop, perhaps before the server existed
        self._make = make
        self._warmup = warmup_shape
        if not background:
            self._start()
        self._thread = threading.Thread(target=self._run, args=(background,), name=name, daemon=True)
        self._thread.start()

    def _start(self) -> None:
        self.server = server = self._make()  # before it compiles: a stop meanwhile ends it as soon as it serves
        try:
            server.start(self._warmup)
        except BaseException:
            server.close()
            self.server = None
            raise

    def _run(self, start_here: bool) -> None:
        if start_here:
            try:
                self._start()
            except Exception as exc:  # said in one line by whoever shows it
                self.error = f"{type(exc).__name__}: {exc}"
                self.ready.set()
                return
        self.ready.set()
        assert self.server is not None
        if self._stopped.is_set():
            self.server.stop()
        self.server.serve_forever()

    @property
    def endpoints(self) -> dict[str, str] | None:
        """The bound addresses once it serves (None while it starts, or when it failed to)."""
        return self.server.endpoints if self.server is not None and self.ready.is_set() else None

    def stop(self, timeout: float = 30.0) -> bool:
        """Ask the loop to end and wait for the thread; whether it ended within ``timeout``."""
        self._stopped.set()
        if self.server is not None:
            self.server.stop()
        self._thread.join(timeout)
        return not self._thread.is_alive()


@contextmanager
def running_server(model_dir: str | Path | ModelSet, config: ServeConfig | None = None,
                   denoiser: Denoiser | None = None, warmup_shape: tuple[int, int] | None = None,
                   finetune_worker: list[str] | None = None) -> Iterator[Server]:
    """A server in a background thread of this process for the ``with`` block (tests, notebooks, the bench).
    ``model_dir``: a model folder or package, or a model set (see :class:`Server`)."""
    runner = ServerThread(lambda: Server(model_dir, config, denoiser, finetune_worker), warmup_shape)
    assert runner.server is not None
    try:
        yield runner.server
    finally:
        if not runner.stop(30):
            if sys.exc_info()[0] is not None:  # do not hide the error that is already on its way out
                log.error("server thread did not stop within 30 s")
            else:
                raise RuntimeError("server thread did not stop within 30 s")
