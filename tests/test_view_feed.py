"""The server's view socket and ViewFeed (what `n2n view` and the napari widget draw), over real sockets on
127.0.0.1 with a real trained model: raw and denoised pixels of the same frame, and a viewer that falls behind
(or stops reading) never slows the server."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from serverkit import camera_frames, config, wait_for

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
        for i, frame in enumerate(frames):
            client.send(frame, seq=100 + i)
            result = client.receive()
            results[result.seq] = result.pixels.copy()
            got = feed.poll(timeout=5.0)
            assert got is not None, f"no view of frame {100 + i}"
            feed.shown(got)
            pairs[got.seq] = got
        wait_for(lambda: feed.poll() is None and feed.server is not None, "a stats message")
        status = client.status()

    assert sorted(pairs) == list(range(100, 106))
    for i, frame in enumerate(frames):
        pair = pairs[100 + i]
        np.testing.assert_array_equal(pair.raw, frame)  # the raw layer is the frame the camera sent
        np.testing.assert_array_equal(pair.denoised, results[100 + i])  # the denoised one what subscribers got
        assert pair.denoised.dtype == frame.dtype and pair.header["raw"]["dtype"] == "uint16"
    summary = feed.summary()
    assert summary["shown"] == 6 and summary["skipped"] == 0 and summary["bad"] == 0
    assert summary["latency_ms"]["n"] == 6 and 0 < summary["latency_ms"]["p50"] < 5000
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
    """A viewer that never reads: a lossless server keeps its rate (against no viewer, in alternating trials of the
    same run, each compared with the one next to it in time), delivers every frame to its subscriber and publishes
    on to the viewer's socket."""
    frames = camera_frames(8, size=256)
    n, pairs = 60, 5

    def trial(client: StreamClient) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            client.send(frames[i % len(frames)])
        for _ in range(n):
            client.receive(timeout=30)
        return n / (time.perf_counter() - t0)

    rates: dict[str, list[float]] = {"alone": [], "stalled": []}
    with running_server(run, config(mode="lossless", queue_size=n)) as server, \
            StreamClient(server.endpoints, send_hwm=n) as client:
        client.wait_subscribed()
        trial(client)  # warm up
        for _ in range(pairs):
            with ViewFeed(server.endpoints["view"]):  # subscribes, never reads
                _wait_viewers(client, 1)
                rates["stalled"].append(trial(client))
            _wait_viewers(client, 0)
            rates["alone"].append(trial(client))
        status = client.status()

    ratio = float(np.median([s / a for s, a in zip(rates["stalled"], rates["alone"])]))
    assert status["drops"] == 0 and status["frames_out"] == (2 * pairs + 1) * n
    assert status["view_frames"] == pairs * n  # published to the stalled viewer (ZeroMQ let go what it could not take)
    assert ratio > 0.75, rates
