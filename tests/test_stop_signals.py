"""streamer.core.signals.stop_signals_to: the one place the product takes Ctrl-C and SIGTERM for a while (no real
signal is raised here: one inside the pytest process once crashed it beside MMCore's threads; the commands that
stop on a real Ctrl-C are tested as processes of their own)."""

from __future__ import annotations

import signal
import threading

import pytest

from streamer.core.signals import stop_signals_to


def _handler(signum: int, frame: object) -> None:  # pragma: no cover - never called: no signal is sent
    raise AssertionError("not called")


def test_installed_inside_and_the_previous_handlers_back_after() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    with stop_signals_to(_handler):
        inside = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    assert inside == (_handler, _handler)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_the_previous_handlers_come_back_when_the_block_raises() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    with pytest.raises(RuntimeError, match="inside"), stop_signals_to(_handler):
        raise RuntimeError("inside")

    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def worker() -> None:
        with stop_signals_to(_handler):
            seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()

    assert seen == [before]
