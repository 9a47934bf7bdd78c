"""The ZeroMQ server over real sockets on 127.0.0.1: lossless and live streams, requests, model swap,
statistics (control, shutdown and malformed input: test_server_control.py; batching: test_server_batching.py)."""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import tiny_train_dict
from serverkit import camera_frames, config
from waiting import GENEROUS_S, wait_for

from streamer.client import ServerError, StreamClient
from streamer.protocol import PROTOCOL_VERSION
from streamer.server import Server, load_denoiser, running_server
from trainer.config import TrainConfig


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    """The session's tiny trained run folder."""
    return trained_run["run"]


@pytest.fixture(scope="module")
def other_run(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny run on the same data with another seed (other weights, name 'other')."""
    from trainer.run import run_training

    out = tmp_path_factory.mktemp("swap") / "other"
    cfg = TrainConfig.model_validate(tiny_train_dict(optim={"seed": 7}))
    run_training(cfg, out, [trained_run["raw"]], [trained_run["truth"]])
    return out


# --- lossless ----------------------------------------------------------------------------------------
def test_lossless_delivers_every_frame_in_order(run: Path) -> None:
    """Lossless mode: 30 pushed frames all come out, in order, each bit-identical to the server's denoiser."""
    frames = camera_frames(30)

    with running_server(run, config(mode="lossless")) as server, StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for i, frame in enumerate(frames):
            client.send(frame, seq=i, meta={"i": i})
        results = [client.receive() for _ in frames]
        status = client.status()

    assert [r.seq for r in results] == list(range(30))
    assert [r.header["meta"] for r in results] == [{"i": i} for i in range(30)]
    for frame, result in zip(frames, results):
        assert result.pixels.dtype == frame.dtype and result.pixels.shape == frame.shape
        assert np.array_equal(result.pixels, server.denoiser(frame))
    assert status["frames_in"] == status["frames_out"] == 30 and status["drops"] == 0
    assert status["mode"] == "lossless"


def push_until_stalled(client: StreamClient, server: Server, frame: np.ndarray) -> int:
    """Push frames (client timeout short) until a send times out and the server has delivered nothing since
    the previous timeout: a lossless server stuck on a subscriber that does not read. Returns frames sent."""
    sent, out_at_last_timeout = 0, -1
    while True:
        assert sent < 50_000, "the producer was never made to wait"
        try:
            client.send(frame, seq=sent)
        except TimeoutError as exc:
            assert "no room to send" in str(exc)
            if server.stats.frames_out == out_at_last_timeout:
                return sent
            out_at_last_timeout = server.stats.frames_out
        else:
            sent += 1


def test_lossless_backpressure_blocks_the_producer(run: Path) -> None:
    """Lossless mode with a subscriber that does not read: the producer's send times out, the server
    holds at most its queue (and still answers status), nothing is dropped, and every frame arrives
    once the subscriber reads."""
    frame = camera_frames(1)[0]

    with running_server(run, config(mode="lossless", queue_size=4)) as server, \
            StreamClient(server.endpoints, timeout=0.5) as client:
        client.wait_subscribed()
        sent = push_until_stalled(client, server, frame)
        stalled = client.status(timeout=10)

        seqs = [client.receive(timeout=10).seq for _ in range(sent)]
        status = client.status(timeout=10)

    held = stalled["frames_in"] - stalled["frames_out"]  # accepted, not yet delivered
    in_hand = held - stalled["queue_depth"]  # one frame, or a batch of up to max_batch (4) small frames
    assert stalled["drops"] == 0 and 1 <= held <= 4 and 1 <= in_hand <= 4
    assert stalled["frames_in"] < sent  # the rest waits in ZeroMQ's queues, back to the producer
    assert seqs == list(range(sent))
    assert status["frames_in"] == status["frames_out"] == sent and status["drops"] == 0


def test_shutdown_while_lossless_output_is_stalled(run: Path) -> None:
    """A shutdown command reaches a lossless server stuck on a subscriber that does not read; the thread
    ends, and every frame it had accepted is accounted for: delivered, or counted as dropped."""
    server = Server(run, config(mode="lossless", queue_size=4))
    server.start()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with StreamClient(server.endpoints, timeout=0.5) as client:
            client.wait_subscribed()
            push_until_stalled(client, server, frame=camera_frames(1)[0])
            held = server.stats.frames_in - server.stats.frames_out
            assert client.control("shutdown", timeout=10) == {"ok": True}
            # the stalled subscriber is closed only once the server has closed: libzmq 4.3.5 aborts the process
            # (session_base.cpp:233, "Resource temporarily unavailable") when a peer disconnects from an XPUB
            # that is closing with a multipart message half sent to it (zeromq/libzmq#3442)
            thread.join(GENEROUS_S)
            assert not thread.is_alive()
    finally:
        server.stop()
        thread.join(10)
    st = server.stats
    # the frames held (queue + the one in hand) were delivered or dropped: how many of each depends on how much
    # the kernel's socket buffers took meanwhile, so only the accounting is certain
    assert 1 <= held <= 4 and 0 <= st.drops <= held
    assert st.frames_in == st.frames_out + st.drops


# --- live -------------------------------------------------------------------------------------------
def test_live_mode_drops_to_keep_latency_low(run: Path) -> None:
    """Live mode with a producer faster than the engine (unpaced, until the server has dropped frames): frames are
    dropped (and counted), the newest frame always comes out, output seqs only increase, and the server never holds
    more than the one frame it will denoise next (latency stays one frame deep; its figure: bench.latency --mode
    live)."""
    cfg = config(mode="live")
    frame = camera_frames(1, size=256)[0]
    seqs: list[int] = []
    depths: list[int] = []
    done = threading.Event()

    with running_server(run, cfg, warmup_shape=frame.shape) as server, \
            StreamClient(server.endpoints) as producer, StreamClient(server.endpoints) as reader:
        reader.wait_subscribed()

        def read() -> None:
            while True:
                try:
                    seq = reader.receive(timeout=0.2).seq
                except TimeoutError:
                    if done.is_set():
                        return
                    continue
                assert seq is not None
                seqs.append(seq)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        sent = 0
        deadline = time.monotonic() + GENEROUS_S
        while time.monotonic() < deadline:  # bursts of 50 frames, each sent in microseconds: faster than any engine
            for _ in range(50):
                producer.send(frame, seq=sent)
                sent += 1
            status = producer.status()
            depths.append(status["queue_depth"])
            if status["drops"] > 0 and sent >= 200:
                break
        wait_for(lambda: (s := producer.status())["frames_in"] == sent
                 and s["frames_out"] + s["drops"] == sent, "every frame to be denoised or dropped", timeout=GENEROUS_S)
        done.set()
        thread.join(10)
        status = producer.status()

    assert status["errors"] == 0 and status["frames_in"] == status["frames_out"] + status["drops"]
    assert status["drops"] > 0, f"{sent} frames sent in bursts, none dropped"
    assert status["drop_fraction"] > 0
    assert seqs and all(a < b for a, b in pairwise(seqs)), "output seqs must strictly increase"
    assert seqs[-1] == sent - 1  # the latest frame wins
    assert len(seqs) == status["frames_out"]
    assert max(depths) <= 1, depths  # live mode holds one frame at most: the newest
    assert 0 < status["latency_ms"]["p50"] <= status["latency_ms"]["p99"]


# --- request / reply ----------------------------------------------------------------------------------
@pytest.mark.parametrize("output_dtype", ["same", "float32"])
def test_request_reply(run: Path, output_dtype: str) -> None:
    """A request gets its frame denoised (the dtype asked for), with seq, meta and ordered stage timestamps."""
    frame = camera_frames(1)[0]

    with running_server(run, config(output_dtype=output_dtype)) as server, StreamClient(server.endpoints) as client:
        result = client.request(frame, meta={"well": "B3"}, seq=77)

    expected = server.denoiser(frame)
    assert result.pixels.dtype == (frame.dtype if output_dtype == "same" else np.float32)
    assert result.pixels.shape == frame.shape and np.array_equal(result.pixels, expected)
    h = result.header
    assert h["type"] == "frame" and h["v"] == PROTOCOL_VERSION and h["seq"] == 77 and h["meta"] == {"well": "B3"}
    assert h["engine"] == server.denoiser.engine.name and h["model"] == server.denoiser.card.name
    st = h["stages"]
    assert h["ts_ns"] <= st["received"] <= st["preprocessed"] <= st["inferred"] <= st["sent"]


def test_receive_never_returns_a_request_result(run: Path) -> None:
    """Requests and pushed frames on one client: receive() gives only the pushed frames' results, in order
    (request results go back to their caller, and on the output only as 'reply' for viewers who ask)."""
    frames = camera_frames(6, seed=31)

    with running_server(run, config(mode="lossless")) as server, StreamClient(server.endpoints) as client, \
            StreamClient(server.endpoints, replies=True) as viewer:
        viewer.subscribe()
        client.wait_subscribed(n=2)
        for i, frame in enumerate(frames):
            replied = client.request(frame, seq=100 + i)
            assert replied.seq == 100 + i
            client.send(frame, seq=i)
        received = [client.receive().seq for _ in frames]
        with pytest.raises(TimeoutError):
            client.receive(timeout=0.3)  # nothing else: no request result slipped in
        seen = sorted(viewer.receive().seq for _ in range(12))

    assert received == list(range(6))
    assert seen == [*range(6), *range(100, 106)]


def test_a_failed_request_is_not_a_stream_error(run: Path) -> None:
    """A bad request gets its error reply; a consumer of the stream listening for errors never sees it (it
    would count it as one of its own frames failing), only errors of pushed frames."""
    frame = camera_frames(1)[0]

    with running_server(run, config(mode="lossless")) as server, StreamClient(server.endpoints) as caller, \
            StreamClient(server.endpoints, errors=True) as consumer:
        consumer.wait_subscribed()
        with pytest.raises(ServerError, match="bad_shape"):
            caller.request(np.zeros((1, 64), np.uint16), seq=5)
        consumer.send(frame.astype(np.float32) * np.nan, seq=6)
        with pytest.raises(ServerError) as pushed:
            consumer.receive()
        consumer.send(frame, seq=7)
        assert consumer.receive().seq == 7

    assert pushed.value.header["seq"] == 6 and pushed.value.code == "not_finite"


def test_request_error_reply_keeps_the_socket_usable(run: Path) -> None:
    """A bad request gets an error reply (ServerError with its code and seq); the same REQ socket then works."""
    frame = camera_frames(1)[0]
    nan_frame = frame.astype(np.float32)
    nan_frame[3, 4] = np.nan

    with running_server(run, config()) as server, StreamClient(server.endpoints) as client:
        with pytest.raises(ServerError, match="not_finite") as info:
            client.request(nan_frame, seq=5)
        assert info.value.code == "not_finite" and info.value.header["seq"] == 5
        with pytest.raises(ServerError) as info:
            client.request(np.zeros((1, 64), np.uint16), seq=6)
        assert info.value.code == "bad_shape" and ">= 2" in str(info.value)
        result = client.request(frame, seq=7)
        status = client.status()

    assert result.seq == 7 and np.array_equal(result.pixels, server.denoiser(frame))
    assert status["errors_by_kind"] == {"not_finite": 1, "bad_shape": 1} and status["frames_out"] == 1


def test_push_errors_are_published(run: Path) -> None:
    """A bad frame pushed to the input comes back on the output as an error message (with errors=True)."""
    frame = camera_frames(1)[0]
    bad = frame.astype(np.float32)
    bad[0, 0] = np.inf

    with running_server(run, config()) as server, StreamClient(server.endpoints, errors=True) as client:
        client.wait_subscribed()
        client.send(bad, seq=11)
        with pytest.raises(ServerError) as info:
            client.receive()
        client.send(frame, seq=12)
        result = client.receive()

    assert info.value.code == "not_finite" and info.value.header["seq"] == 11
    assert result.seq == 12


def test_tiled_frames_through_the_server(run: Path) -> None:
    """A frame larger than the configured tile size is tiled by the server and equals the whole-frame result."""
    frame = camera_frames(1, size=100)[0]
    whole = load_denoiser(run, config())(frame)

    with running_server(run, config(tile_size=48)) as server, StreamClient(server.endpoints) as client:
        result = client.request(frame)
        shapes = client.status()["shapes"]

    assert any(s[2:] == [48, 48] for s in shapes)  # the server really cut it into 48-px tiles
    assert np.abs(result.pixels.astype(np.int64) - whole.astype(np.int64)).max() <= 1


# --- model swap -------------------------------------------------------------------------------------------
def test_model_swap(run: Path, other_run: Path) -> None:
    """swap loads another model: the next frame is that model's output and says so in its header."""
    frame = camera_frames(1)[0]
    expected_new = load_denoiser(other_run, config())(frame)

    with running_server(run, config(models_root=str(other_run.parent.parent))) as server, \
            StreamClient(server.endpoints, replies=True) as client:
        client.wait_subscribed()
        before = client.request(frame)
        reply = client.control("swap", model=str(other_run))
        after = client.request(frame)
        client.send(frame, seq=99)
        published = [client.receive() for _ in range(3)]  # both requests (as replies), then the pushed frame

    assert before.header["model"] == "run" and not np.array_equal(before.pixels, expected_new)
    assert reply["ok"] and reply["status"]["model"] == "other" and reply["status"]["swaps"] == 1
    assert after.header["model"] == "other" and np.array_equal(after.pixels, expected_new)
    assert [r.seq for r in published] == [before.seq, after.seq, 99]
    assert [r.header["model"] for r in published] == ["run", "other", "other"]
    assert np.array_equal(published[2].pixels, expected_new)


def test_failed_swap_keeps_the_old_model(run: Path, tmp_path: Path) -> None:
    """A swap to a folder that does not exist is refused with the reason, and the old model keeps serving."""
    frame = camera_frames(1)[0]
    missing = tmp_path / "nowhere"

    with running_server(run, config(models_root=str(tmp_path))) as server, \
            StreamClient(server.endpoints) as client:
        before = client.request(frame)
        with pytest.raises(RuntimeError, match="no such model folder") as info:
            client.control("swap", model=str(missing))
        after = client.request(frame)
        status = client.status()

    assert str(missing) in str(info.value)
    assert after.header["model"] == before.header["model"] == "run"
    assert np.array_equal(after.pixels, before.pixels)
    assert status["swaps"] == 0 and status["model"] == "run"


def test_a_swap_under_load_loses_no_frame_keeps_order_and_never_stops_serving(run: Path, other_run: Path) -> None:
    """Lossless, frames streaming in: the new model is prepared off the loop (frames keep coming out meanwhile),
    then takes over between two frames; every frame comes out once, in order, the old model's before the new's."""
    frames = camera_frames(8)
    received: list[tuple[int, str, float]] = []
    sent: list[int] = []
    stop = threading.Event()
    with running_server(run, config(mode="lossless", models_root=str(other_run.parent.parent))) as server, \
            StreamClient(server.endpoints, send_hwm=10_000) as client, StreamClient(server.endpoints) as control:
        client.wait_subscribed()

        def produce() -> None:
            while not stop.is_set():
                sent.append(client.send(frames[len(sent) % len(frames)], seq=len(sent)))
                time.sleep(0.002)

        sender = threading.Thread(target=produce)
        sender.start()

        def take() -> None:
            r = client.receive(timeout=20)
            received.append((r.seq, r.header["model"], time.monotonic()))

        while len(received) < 40:  # serving before the swap
            take()
        asked = time.monotonic()
        replies: list[dict] = []
        swapper = threading.Thread(target=lambda: replies.append(control.control("swap", model=str(other_run),
                                                                                  timeout=60)))
        swapper.start()
        while not replies or sum(m == "other" for _, m, _ in received) < 20:
            take()
        stop.set()
        sender.join(timeout=60)
        while len(received) < len(sent):
            take()
        swapper.join(timeout=60)
        status = control.status()

    assert [seq for seq, _, _ in received] == list(range(len(sent)))  # none lost, none twice, in order
    models = [m for _, m, _ in received]
    switch = models.index("other")
    assert set(models[:switch]) == {"run"} and set(models[switch:]) == {"other"}  # one switch, between frames
    assert replies[0]["ok"] and replies[0]["status"]["model"] == "other" and replies[0]["prepared_s"] > 0
    assert any(t > asked for _, m, t in received[:switch])  # the old model served while the new one was prepared
    assert status["swaps"] == 1 and status["drops"] == 0


def test_a_candidate_that_fails_its_checks_never_replaces_the_serving_model(run: Path, other_run: Path,
                                                                             tmp_path: Path) -> None:
    """A candidate whose ONNX file was changed after its card was written (sha256 mismatch) is refused with the
    reason; the old model keeps serving, and the refusal is counted."""
    import shutil

    bad = tmp_path / "candidate"
    shutil.copytree(other_run, bad)
    onnx = bad / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-16] + b"\0" * 16)
    frame = camera_frames(1)[0]
    with running_server(run, config(models_root=str(tmp_path))) as server, StreamClient(server.endpoints) as client:
        before = client.request(frame)
        with pytest.raises(RuntimeError, match="sha256") as info:
            client.control("swap", model="candidate")
        after = client.request(frame)
        status = client.status()

    assert "candidate" in str(info.value)
    assert after.header["model"] == before.header["model"] == "run" and np.array_equal(after.pixels, before.pixels)
    assert status["swaps"] == 0 and status["errors_by_kind"].get("swap_failed") == 1


# --- statistics ----------------------------------------------------------------------------------------
def test_stats_are_complete_and_consistent(run: Path) -> None:
    """The stats socket publishes rates, latency percentiles, stage times, counters and the engine."""
    frame = camera_frames(1)[0]
    nan_frame = frame.astype(np.float32)
    nan_frame[0, 0] = np.nan

    with running_server(run, config()) as server, StreamClient(server.endpoints) as client:
        for _ in range(10):
            client.request(frame)
        with pytest.raises(ServerError):
            client.request(nan_frame)
        deadline = time.monotonic() + 15
        while (stats := client.stats())["frames_in"] < 11:
            assert time.monotonic() < deadline, stats

    assert stats["type"] == "stats"
    for key in ("fps_in", "fps_out", "latency_ms", "server_ms", "stages_ms", "drops", "errors", "errors_by_kind",
                "queue_depth", "engine", "precision", "device", "mode", "model", "subscribers", "uptime_s"):
        assert key in stats, key
    lat = stats["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert 0 < stats["server_ms"]["p50"] <= stats["server_ms"]["p99"]
    assert set(stats["stages_ms"]) == {"queue", "preprocess", "infer", "postprocess", "send"}
    assert all(v is not None and v >= 0 for v in stats["stages_ms"].values())
    assert stats["stages_ms"]["infer"] > 0 and sum(stats["stages_ms"].values()) <= stats["server_ms"]["p99"] * 5
    assert stats["frames_in"] == 11 and stats["frames_out"] == stats["requests"] == 10
    assert stats["drops"] == 0 and stats["drop_fraction"] == 0 and stats["queue_depth"] == 0
    assert stats["errors"] == 1 and stats["errors_by_kind"] == {"not_finite": 1}
    assert stats["fps_in"] > 0 and stats["fps_out"] > 0
    assert stats["engine"] == server.denoiser.engine.name and stats["precision"] == "fp32"
    assert stats["device"] == "cpu" and stats["mode"] == "live" and stats["model"] == "run"
    assert [1, 1, 64, 64] in stats["shapes"]


def test_subscriber_count(run: Path) -> None:
    """The server counts each frame subscriber, a leaving one included; other topics and stray
    messages from a subscriber socket do not count."""
    with running_server(run, config()) as server, StreamClient(server.endpoints) as a:
        a.wait_subscribed(1)
        b = StreamClient(server.endpoints)
        try:
            b.wait_subscribed(2, timeout=5)
            ctx = zmq.Context()
            xsub = ctx.socket(zmq.XSUB)
            try:
                xsub.connect(server.endpoints["output"])
                xsub.send(b"\x01stats")  # another topic
                xsub.send(b"")  # not a subscription at all
                xsub.send(b"hello")
                xsub.send(b"\x01frame")  # a real one: once it counts, the messages before it were seen
                wait_for(lambda: a.status()["subscribers"] >= 3, "the XSUB's frame subscription")
                assert a.status()["subscribers"] == 3
                xsub.send(b"\x00frame")
                wait_for(lambda: a.status()["subscribers"] == 2, "the XSUB's unsubscription")
            finally:
                xsub.close(linger=0)
                ctx.term()
        finally:
            b.close()
        wait_for(lambda: a.status()["subscribers"] == 1, "the subscriber count to drop to 1")
