"""Taking Ctrl-C and SIGTERM for a while: the one way the product installs its own handlers and gives the previous
ones back (``n2n bridge``, ``n2n acquire`` and ``n2n grab --mda`` stopping gracefully, a grab's files finished
before a stop)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["stop_signals_to"]


@contextlib.contextmanager
def stop_signals_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """While inside: SIGINT (Ctrl-C) and SIGTERM go to ``handler(signum, frame)``; the handlers there before are
    restored on the way out, however it is left. Outside the main thread (which alone receives signals) nothing is
    installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
