"""Issue 31's budgets against real servers, scaled down: the live input holds what input_buffer_bytes says whatever
the frames' size, a message of many parts is refused on its size in all (or cut off by ZeroMQ), a large frame's
tiles run a bounded number of pixels per engine call, and viewers are counted by their subscriptions' state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zmq
from serverkit import camera_frames, config
from waiting import wait_for

from bench.faults_budgets import _counts, _live_input, _many_parts, run_budget_faults
from streamer.client import StreamClient
from streamer.denoiser import Denoiser
from streamer.server import running_server


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    return trained_run["run"]


def test_the_live_input_holds_its_byte_budget_whatever_the_frame_size(run: Path, tmp_path: Path) -> None:
    # 60 frames of 512² (0.5 MiB each, the model's hint is 64²) at a 4 MiB budget, pushed while the server is busy
    got = _live_input(run, tmp_path, 1, frames=60, side=512, budget_mb=4)

    assert got["accounted"] and got["budget_mb"] == 4
    assert got["input_peak_mb"] <= 4  # the server's own queue
    assert got["rss_growth_mb"] <= 4 + 3 * 0.5 + 16  # plus ZeroMQ's few messages and the work on one frame


def test_a_message_of_many_parts_is_refused_on_its_size_in_all_and_holds_no_memory_after(run: Path,
                                                                                         tmp_path: Path) -> None:
    small = _many_parts(run, tmp_path, 1, parts=20, part_mb=0.5, limit_mb=1)  # each part under the limit
    large = _many_parts(run, tmp_path, 1, parts=20, part_mb=4, limit_mb=1)  # each part over it

    assert small["refused"] == "oversized" and small["served_after"]
    assert small["rss_growth_mb"] <= 20 * 0.5 + 16  # what ZeroMQ assembled, at most (docs/security.md)
    assert large["refused"].startswith("disconnected") and large["served_after"]
    assert large["rss_growth_mb"] <= 16  # not 80 MiB: ZeroMQ refused its first part


def test_a_large_frame_runs_its_tiles_within_the_pixel_budget_with_the_same_result(run: Path) -> None:
    frame = camera_frames(1, size=96)[0]
    whole = Denoiser.from_model_dir(run, "onnxruntime", "fp32", num_threads=1, tile_size=48, tile_overlap=8)
    bounded = Denoiser.from_model_dir(run, "onnxruntime", "fp32", num_threads=1, tile_size=48, tile_overlap=8,
                                      max_tiles=8, max_tile_pixels=2 * 48 * 48)

    plan = bounded.plan(frame.shape)
    assert plan.batch_shape[0] > 2 and bounded._chunk(plan) == 2 and bounded._engine_shape(plan)[0] == 2
    np.testing.assert_array_equal(bounded(frame), whole(frame))
    assert {s[0] for s in bounded.engine.info()["shapes"]} == {2}  # one fixed tile batch shape compiled


def test_a_viewer_subscribing_twice_then_leaving_leaves_no_count_and_frames_to_nobody_are_drops(
        run: Path, tmp_path: Path) -> None:
    got = _counts(run, tmp_path, 1)

    assert got["viewer_seen"] and got["viewers_subscribed_twice"] == 1
    assert got["viewers_back_to_0"] and got["frame_to_nobody_counted_no_subscriber"]


def test_a_subscriber_subscribing_twice_and_leaving_is_no_longer_counted(run: Path) -> None:
    with running_server(run, config()) as server, StreamClient(server.endpoints) as client:
        ctx = zmq.Context()
        try:
            sub = ctx.socket(zmq.SUB)
            sub.connect(server.endpoints["output"])
            sub.setsockopt(zmq.SUBSCRIBE, b"frame")
            sub.setsockopt(zmq.SUBSCRIBE, b"frame")
            wait_for(lambda: client.status()["subscribers"] == 1, "the subscriber")
            sub.close(linger=0)
            wait_for(lambda: client.status()["subscribers"] == 0, "the count back to 0")
        finally:
            ctx.term()


@pytest.mark.slow
def test_the_budget_benchmark_reports_self_consistent_figures(run: Path, tmp_path: Path) -> None:
    got = run_budget_faults(run, tmp_path, 1, frames=30, side=256, budget_mb=2, parts=10, part_mb=0.5, limit_mb=1,
                            big=(200, 96))

    live = got["live_input"]
    assert live["accounted"] and live["input_peak_mb"] <= live["budget_mb"] == 2
    assert got["many_parts"]["refused"] == "oversized" and got["many_parts"]["served_after"]
    big = got["big_frame"]
    assert big["peak_mb"] >= big["after_mb"] > 0 and big["warm_s"] >= 0
    assert got["counts"]["viewers_back_to_0"] and got["counts"]["frame_to_nobody_counted_no_subscriber"]


def test_the_live_input_keeps_nothing_of_a_message_over_the_limit() -> None:
    """Messages whose first part is just under the limit and whose second tips them over: the input thread keeps
    none of their parts (they would be refused for their size alone), so they cannot pile up unbudgeted; each is
    still handed over (to be refused and counted) with its size and part count."""
    from streamer.server.intake import LiveInput

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("inproc://live-input-test")
    push.connect("inproc://live-input-test")
    limit = 64 * 1024
    pump = LiveInput(pull, budget_bytes=limit, max_bytes=limit)
    pump.start()
    try:
        for _ in range(20):
            push.send_multipart([bytes(limit - 10), bytes(100)])
        got: list = []
        wait_for(lambda: bool(got.extend(pump.take()[0])) or len(got) == 20, "20 messages read")
    finally:
        pump.close()
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
    assert all(g.parts == [] and g.n_parts == 2 and g.size == limit + 90 for g in got)
    assert pump.peak_bytes == 0
