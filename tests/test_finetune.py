"""Online fine-tuning (``n2n serve --finetune``) for real: a server on 127.0.0.1 with its worker process training
the tiny model on the stream, candidates saved as run folders and swapped in off the loop."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from serverkit import camera_frames, config
from waiting import wait_for

from bench.processes import rss_mb
from streamer.client import StreamClient
from streamer.core.card import ModelCard
from streamer.server import running_server
from trainer.live import PairRing, worker_command

WORKER = worker_command()  # the fine-tuning worker the server starts (n2n serve gives the same)
FAST = {"enabled": True, "every": 2, "min_pairs": 4, "ring_pairs": 16, "val_every": 4, "steps": 5, "batch_size": 4,
        "patch_size": 32, "val_crop": 64}


def test_the_ring_is_bounded_holds_out_pairs_and_restarts_on_a_new_frame_size() -> None:
    ring = PairRing(capacity=20, val_every=5)
    a = np.zeros((8, 8), np.uint16)
    for i in range(1000):
        ring.add((a, a + 1), seq=i)
    assert len(ring) <= 20 and len(ring.val) == 4 and len(ring.train) == 16
    assert ring.nbytes <= 20 * 2 * a.nbytes and ring.seen == 1000 and ring.seqs[-1] == 999
    ring.add((np.zeros((4, 4), np.uint16), np.zeros((4, 4), np.uint16)))
    assert len(ring.train) + len(ring.val) == 1  # a new frame size: the old pairs cannot train it
    with pytest.raises(ValueError, match="one shape"):
        ring.add((a, np.zeros((4, 4), np.uint16)))


def test_runs_of_consecutive_frames_go_to_the_worker_whole() -> None:
    """A K-frame model's worker gets K + 1 consecutive frames at a time: they decode as sent, in order; a run with
    frames of two shapes is refused, and so is a message with a frame missing."""
    from streamer.core.messages import decode_pair, encode_pair

    run = tuple(np.full((6, 5), i, np.uint16) for i in range(3))
    parts = [bytes(p) for p in encode_pair(*run, seq=40)]
    frames, seq = decode_pair(parts)
    assert seq == 40 and len(frames) == 3 and all(np.array_equal(a, b) for a, b in zip(frames, run))
    with pytest.raises(ValueError, match="3 frames after the header, got 2"):
        decode_pair(parts[:-1])
    with pytest.raises(ValueError, match="one shape"):
        encode_pair(run[0], np.zeros((5, 5), np.uint16), seq=0)
    ring = PairRing(capacity=8, val_every=4)
    ring.add(frames, seq)
    ring.add(frames[:2], seq)  # another model's pairs (K changed): start over
    assert len(ring) == 1 and len(ring.train[0]) == 2


@pytest.fixture(scope="module")
def k2_run(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny K = 2 run with the K-frame front end (shared frame stem, mixed residual, windows of a frame alone)."""
    from conftest import tiny_train_dict

    from trainer.config import TrainConfig
    from trainer.run import run_training

    out = tmp_path_factory.mktemp("finetune-k2") / "run"  # named as the single-frame copy: the test reads names
    cfg = TrainConfig.model_validate(tiny_train_dict(model={"input_frames": 2, "frame_stem": 2,
                                                            "residual_frames": "mix"},
                                                     data={"repeated_windows": 0.25}))
    run_training(cfg, out, [trained_run["raw"]])
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_candidates_are_swapped_in_under_load_without_losing_a_frame(k: int, request: pytest.FixtureRequest,
                                                                     tmp_path: Path) -> None:
    """Lossless, frames streaming: the worker trains, saves a candidate (margin -1: every round's), the server
    swaps it in between two frames; every frame comes out once, in order; the candidate's folder is a model
    folder with a card that says where it came from. A K-frame model (K = 2) fine-tunes on runs of K + 1 frames
    and its candidates keep its K."""
    run_copy = request.getfixturevalue("run_copy") if k == 1 else request.getfixturevalue("k2_run")
    out = tmp_path / "live"
    frames = camera_frames(8, size=64, seed=3)
    received: list[tuple[int | None, str]] = []
    with running_server(run_copy, config(mode="lossless", finetune={**FAST, "margin": -1.0, "out": str(out)}),
                        finetune_worker=WORKER) as server, StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        deadline = time.monotonic() + 240
        seq = 0
        while time.monotonic() < deadline and not any(m != "run" for _, m in received[-5:]):
            client.send(frames[seq % 8], seq=seq)
            r = client.receive(timeout=30)
            received.append((r.seq, r.header["model"]))
            seq += 1
        for _ in range(10):  # and on with the new model
            client.send(frames[seq % 8], seq=seq)
            r = client.receive(timeout=30)
            received.append((r.seq, r.header["model"]))
            seq += 1
        status = client.status()

    assert [s for s, _ in received] == list(range(seq))
    models = [m for _, m in received]
    first_new = next(i for i, m in enumerate(models) if m != "run")
    assert set(models[:first_new]) == {"run"} and models[first_new].startswith("run-live-")
    ft = status["finetune"]
    assert ft["swaps"] >= 1 and ft["candidates"] >= 1 and ft["pairs"] >= FAST["min_pairs"] and ft["steps"] >= 5
    assert ft["val_serving"] > 0 and ft["val_candidate"] > 0
    assert status["drops"] == 0 and status["swaps"] >= 1
    card = ModelCard.load(out / models[first_new])  # its files check against their sha256
    provenance = card.training["finetuned"]
    assert provenance["from"].endswith("run") and provenance["pairs_seen"] >= FAST["min_pairs"]
    assert card.input_frames == k and card.architecture == ModelCard.load(run_copy).architecture


def test_the_worker_dying_does_not_stop_serving(run_copy: Path, tmp_path: Path) -> None:
    frames = camera_frames(4, size=64)
    with running_server(run_copy, config(finetune={**FAST, "out": str(tmp_path)}), finetune_worker=WORKER) as server, \
            StreamClient(server.endpoints) as client:
        pid = client.status()["finetune"]["worker_pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "stopped" in client.status()["finetune"]["state"], "the worker's end to be reported", 30)
        results = [client.request(f) for f in frames]
        status = client.status()

    assert all(r.pixels.shape == frames[0].shape for r in results)
    assert "worker exit -9" in status["finetune"]["state"] and status["errors"] == 0


def test_memory_stays_bounded_over_a_long_run(run_copy: Path, tmp_path: Path) -> None:
    """2,000 frames with fine-tuning on: the worker's ring stays within its bound and the server's memory levels
    off (its growth over the second half is small)."""
    frames = camera_frames(8, size=64, seed=5)
    with running_server(run_copy, config(mode="lossless", finetune={**FAST, "out": str(tmp_path)}),
                        finetune_worker=WORKER) as server, \
            StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        wait_for(lambda: client.status()["finetune"].get("state") == "collecting", "the worker to start", 120)
        marks = []
        for i in range(2000):
            client.send(frames[i % 8], seq=i)
            client.receive(timeout=30)
            if i in (999, 1999):
                marks.append(rss_mb(os.getpid()))
        wait_for(lambda: client.status()["finetune"].get("pairs", 0) >= FAST["min_pairs"], "the worker's pairs", 60)
        status = client.status()

    ft = status["finetune"]
    bound_mb = FAST["ring_pairs"] * 2 * 64 * 64 * 2 / 2**20
    assert ft["ring_mb"] <= bound_mb + 0.1 and ft["pairs_sent"] > 0
    assert marks[1] - marks[0] < 30, marks  # MiB over the second 1,000 frames
    assert status["frames_out"] == 2000 and status["drops"] == 0


def test_the_worker_ends_when_the_server_is_killed(run_copy: Path, tmp_path: Path) -> None:
    """`n2n serve --finetune` killed with SIGKILL (no chance to stop its worker): the worker ends by itself."""
    import json
    import subprocess
    import sys

    from streamer.endpoints import ENDPOINT_NAMES

    ready = tmp_path / "ready.json"
    settings = tmp_path / "serve.yaml"
    settings.write_text(json.dumps({"version": 1, "finetune": {**FAST, "out": str(tmp_path / "live")}}))
    addresses = [a for name in ENDPOINT_NAMES for a in (f"--{name}-address", "tcp://127.0.0.1:*")]
    proc = subprocess.Popen([sys.executable, "-m", "n2n", "serve", "--model", str(run_copy), "--config", str(settings),
                             "--threads", "1", "--precision", "fp32", *addresses, "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, "the server's ready file", 120)
        endpoints = json.loads(ready.read_text())["endpoints"]
        with StreamClient(endpoints) as client:
            worker = client.status()["finetune"]["worker_pid"]
        os.kill(worker, 0)  # running
        proc.kill()
        proc.wait(timeout=30)

        def gone() -> bool:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{worker}/stat") as f:  # a zombie (ended, not yet reaped by init) counts as ended
                return f.read().split(") ")[1].startswith("Z")

        wait_for(gone, "the orphaned worker to end", 60)
    finally:
        if proc.poll() is None:
            proc.kill()
