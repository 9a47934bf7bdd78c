"""StreamClient: every wait is bounded and names the address; server errors carry their code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.client import ServerError, StreamClient
from streamer.endpoints import ENDPOINT_NAMES, Endpoints
from streamer.protocol import encode_error
from streamer.server import ServeConfig, running_server

NAMES = ENDPOINT_NAMES


def free_addresses(n: int) -> list[str]:
    """``n`` local TCP addresses nobody listens on (bound to a random port, then released)."""
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.PULL) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind("tcp://127.0.0.1:*")
        return [sock.getsockopt_string(zmq.LAST_ENDPOINT) for sock in socks]
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


@pytest.fixture
def nowhere() -> dict[str, str]:
    """Endpoints at which no server runs."""
    return dict(zip(NAMES, free_addresses(len(NAMES))))


@pytest.mark.parametrize("call", ["request", "receive", "stats", "control", "status", "wait_subscribed"])
def test_timeouts_name_the_address(nowhere: dict[str, str], call: str) -> None:
    """With no server, each waiting call raises TimeoutError within its timeout, naming the address it waited on."""
    frame = np.zeros((8, 8), np.uint16)
    socket_of = {"request": "request", "receive": "output", "stats": "stats", "control": "control",
                 "status": "control", "wait_subscribed": "control"}
    with StreamClient(nowhere, timeout=0.2) as client:
        calls: dict[str, Callable[[], object]] = {
            "request": lambda: client.request(frame), "receive": client.receive, "stats": client.stats,
            "control": lambda: client.control("status"), "status": client.status,
            "wait_subscribed": client.wait_subscribed}
        with pytest.raises(TimeoutError, match=r"within 0\.2 s") as info:
            calls[call]()

    assert nowhere[socket_of[call]] in str(info.value)


def test_timed_out_request_does_not_wedge_the_socket(trained_run: dict[str, Path]) -> None:
    """After a request times out (no server yet), the same client's next request works once a server is up."""
    addresses = dict(zip(NAMES, free_addresses(len(NAMES))))
    frame = np.full((16, 16), 130, np.uint16)
    with StreamClient(addresses, timeout=10) as client:
        with pytest.raises(TimeoutError):
            client.request(frame, seq=1, timeout=0.2)
        cfg = ServeConfig(num_threads=1, precision="fp32", endpoints=Endpoints(**addresses))
        with running_server(trained_run["run"], cfg):
            result = client.request(frame, seq=2)

    assert result.seq == 2 and result.pixels.shape == frame.shape


def test_server_error_carries_the_code() -> None:
    """ServerError keeps the error code, the header and the server's message."""
    from streamer.protocol import decode_header

    header = decode_header(encode_error("bad_shape", "expected a 2-D frame, got 3-D", seq=4))

    exc = ServerError(header)

    assert exc.code == "bad_shape" and exc.header["seq"] == 4
    assert str(exc) == "bad_shape: expected a 2-D frame, got 3-D"


def test_server_error_from_a_running_server(trained_run: dict[str, Path]) -> None:
    """A refused request raises ServerError whose code names the kind of error."""
    local = Endpoints.local()
    cfg = ServeConfig(num_threads=1, precision="fp32", endpoints=local)
    with running_server(trained_run["run"], cfg) as server, StreamClient(server.endpoints) as client:
        with pytest.raises(ServerError) as info:
            client.request(np.zeros((1, 16), np.uint8), seq=9)

    assert info.value.code == "bad_shape" and info.value.header["seq"] == 9


def test_default_endpoints() -> None:
    """A client without endpoints uses the config's default addresses."""
    with StreamClient() as client:
        assert client.endpoints == Endpoints().model_dump()


def test_sequence_numbers(nowhere: dict[str, str]) -> None:
    """send numbers frames from 0, or from a given seq onwards (as they arrive at a PULL socket)."""
    import json

    frame = np.zeros((4, 4), np.uint8)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    try:
        pull.bind(nowhere["input"])
        with StreamClient(nowhere, timeout=5) as client:
            seqs = [client.send(frame), client.send(frame), client.send(frame, seq=10), client.send(frame)]
            arrived = [json.loads(pull.recv_multipart()[0])["seq"] for _ in seqs]
    finally:
        pull.close(linger=0)
        ctx.term()

    assert seqs == arrived == [0, 1, 10, 11]


def test_send_to_a_dead_server_fails_within_its_timeout(nowhere: dict[str, str]) -> None:
    """Frames are queued only on a live connection: with nobody there, send() says so instead of queueing
    frames that would be lost."""
    with StreamClient(nowhere, timeout=0.2) as client, pytest.raises(TimeoutError, match="no room to send"):
        client.send(np.zeros((4, 4), np.uint8))
    assert client.sent == 0
