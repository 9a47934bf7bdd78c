"""Lossless mode batches small frames already waiting: identical output, order kept, bounded by the
queue, prepared once, and a failed batch falls back to single frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serverkit import camera_frames, config, stream_all

from streamer.client import StreamClient
from streamer.server import load_denoiser, running_server


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    """The session's tiny trained run folder."""
    return trained_run["run"]


def test_lossless_batches_waiting_frames_identically(run: Path) -> None:
    """Lossless mode with frames waiting: small frames run as engine batches of max_batch, and every frame
    still comes out once, in order, bit-identical to denoising it on its own."""
    frames = camera_frames(40, size=96, seed=5)

    with running_server(run, config(mode="lossless", max_batch=4, queue_size=8)) as server, \
            StreamClient(server.endpoints) as client:
        results, status = stream_all(client, frames)

    assert [r.seq for r in results] == list(range(40))
    assert status["batched_frames"] >= 4 and status["batched_frames"] % 4 == 0
    assert status["frames_out"] == 40 and status["drops"] == 0
    for frame, result in zip(frames, results):
        assert np.array_equal(result.pixels, server.denoiser(frame))


def test_batching_is_off_for_large_frames_and_live_mode(run: Path) -> None:
    """Frames above batch_max_pixels, and live mode, are never batched."""
    frames = camera_frames(12, size=96, seed=6)
    for cfg in (config(mode="lossless", max_batch=4, batch_max_pixels=96 * 96 - 1), config(mode="live")):
        with running_server(run, cfg) as server, StreamClient(server.endpoints) as client:
            client.wait_subscribed()
            for i, frame in enumerate(frames):
                client.send(frame, seq=i)
            if cfg.mode == "lossless":
                assert [client.receive().seq for _ in frames] == list(range(12))
            status = client.status()
        assert status["batched_frames"] == 0


def test_batches_are_bounded_by_the_queue(run: Path) -> None:
    """max_batch above queue_size is not an error: batches are as large as the queue (a batch is made of
    frames already waiting there), so a small queue still batches."""
    frames = camera_frames(24, size=64, seed=7)

    with running_server(run, config(mode="lossless", max_batch=8, queue_size=2)) as server, \
            StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for i, frame in enumerate(frames):
            client.send(frame, seq=i)
        assert [client.receive().seq for _ in frames] == list(range(24))
        status = client.status()

    assert status["batched_frames"] % 2 == 0 and status["frames_out"] == 24


def test_each_frame_shape_is_prepared_once(run: Path) -> None:
    """After a batch the next single frame of the same shape runs straight away: no second warm-up of
    the engine (which would cost a whole inference per batch)."""
    cfg = config(mode="lossless")
    den = load_denoiser(run, cfg)
    calls: list[tuple[int, ...]] = []
    real = den.engine.infer_frames

    def counting(frames: np.ndarray, *args: Any) -> np.ndarray:
        calls.append(frames.shape)
        return real(frames, *args)

    den.engine.infer_frames = counting  # type: ignore[method-assign]
    frames = list(camera_frames(9, size=64, seed=8))
    den.batch(frames[:4])
    den.batch(frames[4:8])
    den(frames[8])

    assert calls == [(1, 1, 64, 64), (4, 1, 64, 64), (4, 1, 64, 64), (1, 1, 64, 64)]  # warm-up, then real


def test_failed_batch_falls_back_to_single_frames(run: Path) -> None:
    """A batch the engine refuses (say its memory) is not lost: its frames are denoised one by one."""
    frames = camera_frames(16, size=64, seed=9)
    with running_server(run, config(mode="lossless", max_batch=4, queue_size=8)) as server, \
            StreamClient(server.endpoints) as client:
        def refuse(*_args: Any, **_kwargs: Any) -> list[np.ndarray]:
            raise MemoryError("no room for a batch")

        server.denoiser.batch = refuse  # type: ignore[method-assign]
        client.wait_subscribed()
        for i, frame in enumerate(frames):
            client.send(frame, seq=i)
        results = [client.receive() for _ in frames]
        status = client.status()

    assert [r.seq for r in results] == list(range(16))
    assert status["frames_out"] == 16 and status["errors"] == 0 and status["batched_frames"] == 0
