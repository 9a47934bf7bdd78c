"""Waiting in tests: for an event, with a generous timeout, never for a fixed time; and never an assertion on how
long something took (a busy machine is slower, not wrong). See docs/developing.md, "No timing assertions in tests"."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

GENEROUS_S = 120.0
"""How long a test waits for something that takes well under a second on an idle machine."""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def ctrl_c_when(proc: subprocess.Popen[str], condition: Callable[[], bool], what: str,
                timeout: float = GENEROUS_S) -> str:
    """Ctrl-C (SIGINT) to ``proc`` once ``condition`` holds (failing naming ``what`` after ``timeout``), and its
    stderr once it has ended; a process still running when the test fails is killed."""
    try:
        wait_for(condition, what, timeout=timeout)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err


class Finishing:
    """``fn(*args, **kwargs)`` in a thread of its own: :meth:`result` waits for it to return (its value, or the
    exception it raised), failing naming ``what`` if it has not returned after ``timeout`` seconds. For what must
    end on its own or on request (a stop, a shutdown), where a test would otherwise time it."""

    def __init__(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        self.what = what
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the test's thread
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"test-{what}", daemon=True)
        self._thread.start()

    def result(self, timeout: float = GENEROUS_S) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{self.what} had not returned after {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._value
