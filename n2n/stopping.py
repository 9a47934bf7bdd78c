"""How a command that runs the microscope takes Ctrl-C and SIGTERM (``n2n bridge``, ``n2n acquire``, ``n2n grab
--mda``): the first asks it to stop, and it finishes what it started; a second Ctrl-C aborts at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from n2n.command import log
from streamer.core.signals import stop_signals_to

__all__ = ["graceful_signals"]


@contextlib.contextmanager
def graceful_signals(stop: threading.Event, finishing: str = "finishing the frames already sent") -> Iterator[None]:
    """While inside: the first Ctrl-C or SIGTERM sets ``stop`` (logged with what is ``finishing`` meanwhile); a second
    Ctrl-C raises KeyboardInterrupt. Outside the main thread (which alone receives signals) it does nothing."""

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received: %s (Ctrl-C again to abort)", signal.Signals(signum).name, finishing)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    with stop_signals_to(on_signal):
        yield
