"""Every StreamClient call is bounded by its timeout: against a CURVE server that does not know the client's key
(the handshake never completes, so a REQ socket has no peer and used to block in its second send), status()
twice and control() each raise TimeoutError naming the address and the likely cause, and return."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq.auth
from serverkit import config
from waiting import GENEROUS_S

from streamer.client import StreamClient
from streamer.security import ClientKeys, make_keys
from streamer.server import running_server


def finished(call: Callable[[], Any]) -> BaseException | None:
    """Run ``call`` in a thread; the error it raised (None if it returned). Fails if it is still blocked after a
    generous wait (a guard against a hang, not a timing assertion)."""
    caught: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            caught.append(None)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GENEROUS_S)
    assert not thread.is_alive(), "the call is still blocked"
    return caught[0]


@pytest.fixture
def stranger_keys(tmp_path: Path) -> tuple[Path, ClientKeys]:
    folder = tmp_path / "keys"
    make_keys(folder)
    zmq.auth.create_certificates(folder, "stranger")  # a key pair the server's allow-list does not hold
    return folder, ClientKeys.load(folder, "stranger")


def test_an_unknown_curve_key_times_out_every_call_and_never_blocks(trained_run: dict[str, Path],
                                                                    stranger_keys: tuple[Path, ClientKeys]) -> None:
    folder, keys = stranger_keys
    with running_server(trained_run["run"], config(curve_keys=str(folder))) as server, \
            StreamClient(server.endpoints, timeout=0.5, keys=keys) as client:
        errors = [finished(client.status), finished(client.status), finished(lambda: client.control("status")),
                  finished(lambda: client.request(np.zeros((32, 32), np.uint16)))]

    for error in errors:
        assert isinstance(error, TimeoutError), error
        assert server.endpoints["control"] in str(error) or server.endpoints["request"] in str(error)
        assert "does it know this client's key?" in str(error)


def test_a_missing_server_times_out_twice_and_the_client_still_works_after(trained_run: dict[str, Path]) -> None:
    """No server: two timeouts in a row; then a server on that address answers the same client (the socket that
    timed out was replaced)."""
    with running_server(trained_run["run"], config()) as server:
        endpoints = dict(server.endpoints)
    with StreamClient(endpoints, timeout=0.3) as client:
        first, second = finished(client.status), finished(client.status)
        assert isinstance(first, TimeoutError) and isinstance(second, TimeoutError)
        assert "(is `n2n serve` running there?)" in str(second)
        with running_server(trained_run["run"], config(endpoints=endpoints)):
            client.timeout = GENEROUS_S
            assert "frames_in" in client.status()
