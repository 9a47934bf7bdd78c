"""What the server tests share: a local test configuration, camera frames, waiting (:mod:`waiting`), address
checks."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zmq
from conftest import TINY_CAMERA

from streamer.client import Result, StreamClient
from streamer.core.messages import StatsMessage
from streamer.endpoints import ENDPOINT_NAMES, Endpoints
from streamer.protocol import TOPIC_STATS
from streamer.server import ServeConfig
from streamer.sources import SimulatedCameraConfig, simulate_stack

NAMES = ENDPOINT_NAMES
LOCAL = Endpoints.local()


def config(**overrides: Any) -> ServeConfig:
    """A test server: random local ports, one engine thread, fp32 (bit-reproducible), fast stats."""
    base: dict[str, Any] = {"num_threads": 1, "precision": "fp32", "endpoints": LOCAL, "stats_interval_s": 0.1}
    return ServeConfig.model_validate({**base, **overrides})


def camera_frames(n: int, size: int = 64, seed: int = 21) -> np.ndarray:
    """``n`` uint16 frames from the simulated camera."""
    cam = SimulatedCameraConfig(**{**TINY_CAMERA, "height": size, "width": size, "seed": seed})
    return simulate_stack(cam, n)[0]


def stream_all(client: StreamClient, frames: Sequence[np.ndarray]) -> tuple[list[Result], StatsMessage]:
    """Push ``frames`` (seq 0, 1, ...) once the server sees the subscription, receive as many results, and the
    server's status after them (a lossless server: one result per frame)."""
    client.wait_subscribed()
    for i, frame in enumerate(frames):
        client.send(frame, seq=i)
    results = [client.receive() for _ in frames]
    return results, client.status()


def assert_rebindable(endpoints: Mapping[str, str]) -> None:
    """Every TCP address the server had can be bound again (its sockets are closed)."""
    ctx = zmq.Context()
    try:
        for address in endpoints.values():
            sock = ctx.socket(zmq.PULL)
            try:
                sock.bind(address)
            finally:
                sock.close(linger=0)
    finally:
        ctx.term()


@contextlib.contextmanager
def stats_publisher(*messages: Sequence[bytes]) -> Iterator[str]:
    """A real PUB socket on 127.0.0.1 sending each of ``messages`` (the parts after the stats topic) every 20 ms
    until the block ends; yields its address (a server's stats, as ``n2n dash`` sees them)."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    done = threading.Event()

    def publish() -> None:
        while not done.wait(0.02):  # until the block ends
            for parts in messages:
                pub.send_multipart([TOPIC_STATS, *parts])

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        done.set()
        publisher.join()
        pub.close(linger=0)
        ctx.term()
