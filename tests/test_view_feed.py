"""The server's view socket and ViewFeed (what `n2n view` and the napari widget draw), over real sockets on
127.0.0.1 with a real trained model: raw and denoised pixels of the same frame, and a viewer that falls behind
(or stops reading) never slows the server."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from serverkit import camera_frames, config
from waiting import GENEROUS_S, wait_for

from streamer.client import StreamClient
from streamer.server import running_server
from streamer.viewer import ViewFeed


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    return trained_run["run"]


def _wait_viewers(client: StreamClient, n: int) -> None:
    wait_for(lambda: client.status()["viewers"] == n, f"the server to count {n} viewers")


def test_the_viewer_gets_each_frame_raw_and_denoised_as_the_server_sent_it(run: Path) -> None:
    frames = camera_frames(6, size=48)
    with running_server(run, config(mode="lossless")) as server, StreamClient(server.endpoints) as client, \
            ViewFeed(server.endpoints["view"], server.endpoints["stats"]) as feed:
        client.wait_subscribed()
        _wait_viewers(client, 1)
        pairs = {}
        results = {}
        start_ns = time.time_ns()
        for i, frame in enumerate(frames):
            client.send(frame, seq=100 + i)
            result = client.receive()
            results[result.seq] = result.pixels.copy()
            got = feed.poll(timeout=30.0)
            assert got is not None, f"no view of frame {100 + i}"
            feed.shown(got)
            pairs[got.seq] = got
        wait_for(lambda: feed.poll() is None and feed.server is not None, "a stats message")
        status = client.status()
        span_ms = (time.time_ns() - start_ns) / 1e6  # every frame was captured and shown within it

    assert sorted(pairs) == list(range(100, 106))
    for i, frame in enumerate(frames):
        pair = pairs[100 + i]
        np.testing.assert_array_equal(pair.raw, frame)  # the raw layer is the frame the camera sent
        np.testing.assert_array_equal(pair.denoised, results[100 + i])  # the denoised one what subscribers got
        assert pair.denoised.dtype == frame.dtype and pair.header["raw"]["dtype"] == "uint16"
    summary = feed.summary()
    assert summary["shown"] == 6 and summary["skipped"] == 0 and summary["bad"] == 0
    assert summary["latency_ms"]["n"] == 6 and 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["latency_ms"]["p99"] <= span_ms  # in ms, from capture to shown
    assert status["view_frames"] == 6 and status["viewers"] == 1


def test_viewers_are_counted_and_a_viewer_alone_is_a_delivery(run: Path) -> None:
    """A viewer leaving is seen; frames pushed while only a viewer watches are not 'no_subscriber' drops."""
    frames = camera_frames(3, size=48)
    with running_server(run, config(mode="lossless")) as server, StreamClient(server.endpoints) as client:
        assert client.status()["viewers"] == 0
        with ViewFeed(server.endpoints["view"]) as feed:
            _wait_viewers(client, 1)
            for frame in frames:
                client.send(frame)
            wait_for(lambda: feed.poll() is not None or feed.received >= 3, "the view of the frames", 15)
            wait_for(lambda: client.status()["frames_out"] == 3, "three frames out")
        _wait_viewers(client, 0)
        status = client.status()

    assert status["drops"] == 0 and status["view_frames"] == 3


def test_a_stalled_viewer_does_not_slow_the_server(run: Path) -> None:
    """A viewer that never reads cannot hold a lossless server back: with it subscribed, the server delivers every
    frame of a stream many times larger than all the buffers between them (the view socket's two messages and its
    256 KiB kernel buffer, the viewer's), so it never waited on the viewer, and publishes each frame to the viewer's
    socket as well (ZeroMQ lets go what the viewer cannot take). How fast it serves meanwhile: bench.viewer
    (``stalled_over_alone``)."""
    frames = camera_frames(8, size=256)
    n = 60  # 60 raw | denoised pairs of 256² uint16: 15 MiB through the view socket

    with running_server(run, config(mode="lossless", queue_size=n)) as server, \
            StreamClient(server.endpoints, send_hwm=n) as client:
        client.wait_subscribed()
        with ViewFeed(server.endpoints["view"]):  # subscribes, never reads
            _wait_viewers(client, 1)
            for i in range(n):
                client.send(frames[i % len(frames)], seq=i)
            seqs = [client.receive(timeout=GENEROUS_S).seq for _ in range(n)]
            status = client.status()

    assert seqs == list(range(n))
    assert status["drops"] == 0 and status["frames_out"] == n
    assert status["view_frames"] == n  # published to the stalled viewer
