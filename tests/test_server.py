"""The ZeroMQ server over real sockets on 127.0.0.1: lossless and live streams, requests, model swap,
statistics, control, shutdown (in-process and the `n2n serve` command) and malformed input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import TINY_CAMERA, tiny_train_dict

from streamer.client import ServerError, StreamClient
from streamer.config import ENDPOINT_NAMES, Endpoints, ServeConfig
from streamer.protocol import PROTOCOL_VERSION, decode_header, encode_frame
from streamer.server import Server, load_denoiser, running_server
from streamer.sources import SimulatedCameraConfig, simulate_stack
from trainer.config import TrainConfig

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


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


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
        thread.join(10)
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
    """Live mode with a producer twice as fast as the engine: frames are dropped (and counted), the newest
    frame always comes out, output seqs only increase, and latency stays a few frames deep."""
    cfg = config(mode="live")
    frame = camera_frames(1, size=256)[0]
    probe = load_denoiser(run, cfg)
    probe(frame)
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        probe(frame)
        times.append(time.perf_counter() - t0)
    fastest, frame_s = min(times), float(np.median(times))  # pace by the fastest: surely twice the engine
    seqs: list[int] = []
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
        sent, due = 0, time.perf_counter()
        end = due + 3.0
        while time.perf_counter() < end:
            producer.send(frame, seq=sent)
            sent += 1
            due += fastest / 2
            time.sleep(max(0.0, due - time.perf_counter()))
        wait_for(lambda: (s := producer.status())["frames_in"] == sent
                 and s["frames_out"] + s["drops"] == sent, "every frame to be denoised or dropped")
        done.set()
        thread.join(10)
        status = producer.status()

    assert status["errors"] == 0 and status["frames_in"] == status["frames_out"] + status["drops"]
    assert status["drops"] > 0, f"{sent} frames at {2 / fastest:.0f}/s, none dropped"
    assert status["drop_fraction"] > 0
    assert seqs and all(a < b for a, b in pairwise(seqs)), "output seqs must strictly increase"
    assert seqs[-1] == sent - 1  # the latest frame wins
    assert status["latency_ms"]["p99"] < 5 * frame_s * 1000 + 100, (status["latency_ms"], frame_s)


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

    with running_server(run, config()) as server, StreamClient(server.endpoints, replies=True) as client:
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

    with running_server(run, config()) as server, StreamClient(server.endpoints) as client:
        before = client.request(frame)
        with pytest.raises(RuntimeError, match="no such model folder") as info:
            client.control("swap", model=str(missing))
        after = client.request(frame)
        status = client.status()

    assert str(missing) in str(info.value)
    assert after.header["model"] == before.header["model"] == "run"
    assert np.array_equal(after.pixels, before.pixels)
    assert status["swaps"] == 0 and status["model"] == "run"


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


# --- control and shutdown ----------------------------------------------------------------------------
def test_bad_control_commands_are_refused(run: Path) -> None:
    """Unknown commands, non-JSON and non-object commands get ok: false with the reason; the server goes on."""
    with running_server(run, config()) as server, StreamClient(server.endpoints) as client:
        with pytest.raises(RuntimeError, match="unknown command 'dance'"):
            client.control("dance")
        with pytest.raises(RuntimeError, match="swap needs 'model'"):
            client.control("swap")
        ctx = zmq.Context()
        req = ctx.socket(zmq.REQ)
        replies = []
        try:
            req.connect(server.endpoints["control"])
            for raw in (b"not json", b"[1, 2]", b"\xff"):
                req.send(raw)
                assert req.poll(5000)
                replies.append(json.loads(req.recv()))
        finally:
            req.close(linger=0)
            ctx.term()
        status = client.status()

    assert all(r["ok"] is False and "bad control message" in r["error"] for r in replies)
    assert "expected a JSON object" in replies[1]["error"]
    assert status["errors_by_kind"] == {"bad_control": 5}


def test_shutdown_command_stops_the_server(run: Path) -> None:
    """The shutdown command ends serve_forever promptly and frees every address."""
    server = Server(run, config())
    endpoints = dict(server.start())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with StreamClient(endpoints) as client:
            assert client.request(camera_frames(1)[0]).pixels.shape == (64, 64)
            t0 = time.monotonic()
            assert client.control("shutdown") == {"ok": True}
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - t0 < 5
        assert server.stopping
    finally:
        server.stop()
        thread.join(10)
    assert_rebindable(endpoints)


def test_running_server_frees_its_addresses(run: Path) -> None:
    """Leaving running_server stops the thread and closes every socket."""
    with running_server(run, config()) as server:
        endpoints = dict(server.endpoints)

    assert_rebindable(endpoints)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_command_stops_on_signal(run: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """`n2n serve` serves, then on SIGINT or SIGTERM exits 0 within 10 s, prints its summary and frees its ports."""
    assert (Path(__file__).parent.parent / "n2n" / "__main__.py").is_file()
    ready = tmp_path / "ready.json"
    addresses = [arg for name in NAMES for arg in (f"--{name}-address", "tcp://127.0.0.1:*")]
    cmd = [sys.executable, "-m", "n2n", "serve", "--model", str(run), "--threads", "1", "--precision", "fp32",
           *addresses, "--ready-file", str(ready)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, "the ready file", timeout=90)
        assert proc.poll() is None, proc.communicate()
        info = json.loads(ready.read_text())
        with StreamClient(info["endpoints"]) as client:
            assert client.request(camera_frames(1)[0]).pixels.shape == (64, 64)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, err
    assert "stopped: 1 frames in, 1 out, 0 dropped, 0 errors" in out + err, out + err
    assert info["model"] == "run" and set(info["endpoints"]) == set(NAMES)
    assert_rebindable(info["endpoints"])


# --- malformed input ------------------------------------------------------------------------------------
def malformed_messages(seed: int = 0) -> list[tuple[list[bytes], str | None]]:
    """Several hundred bad messages and the error code each must get (None: any)."""
    rng = np.random.default_rng(seed)
    frame = camera_frames(1, size=16)[0]
    head, body = (bytes(p) if isinstance(p, bytes) else p.tobytes() for p in encode_frame(frame, seq=1))
    header = json.loads(head)

    def with_header(**changes: Any) -> list[bytes]:
        h = {**header, **changes}
        return [json.dumps(h).encode(), body]

    def noise(n: int) -> bytes:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    msgs: list[tuple[list[bytes], str | None]] = []
    msgs += [([noise(int(rng.integers(0, 300)))], "bad_parts") for _ in range(60)]  # one part of junk
    msgs += [([noise(int(rng.integers(1, 300))), noise(int(rng.integers(0, 600)))], "bad_header")
             for _ in range(60)]  # two parts of junk
    msgs += [([b""], "bad_parts"), ([b"", b""], "bad_header"), ([b"", b"", b""], "bad_parts")]  # empty
    msgs += [([head] * k + [body] * (k > 3), "bad_parts") for k in (1, 3, 4, 6)]  # wrong part counts
    msgs += [([head, body, body], "bad_parts")] * 5
    msgs += [([head, body[: int(rng.integers(0, len(body)))]], "bad_length") for _ in range(30)]  # truncated
    msgs += [([head, body + noise(int(rng.integers(1, 50)))], "bad_length") for _ in range(10)]
    for text in (b'{"v": 1, "shape": [16, 16]', b"{'v': 1}", b'{"v": 1,}', b"\xff\xfe{}", b"[" * 50_000,
                 b'{"v": 1, "seq": ' + b"9" * 5000 + b"}", b"null", b"[]", b'"frame"', b"3.5"):
        msgs += [([text, body], "bad_header")] * 3
    for _ in range(20):  # NaN / inf floats
        bad = frame.astype(np.float32)
        bad.flat[int(rng.integers(0, bad.size))] = rng.choice([np.nan, np.inf, -np.inf])
        msgs.append(([p if isinstance(p, bytes) else p.tobytes() for p in encode_frame(bad, seq=2)], "not_finite"))
    for v in (0, 2, 99, "1", None, [1], 1.5):
        msgs += [(with_header(v=v), "bad_version")] * 3
    for shape in ([2**20, 2**20], [10**12, 10**12], [2**40, 16], [70_000, 70_000]):  # huge declared shapes
        msgs += [(with_header(shape=shape), "oversized")] * 3
    bad_shapes: list[Any] = [[16], [16, 16, 1], [0, 16], [1, 16], [-16, -16], [16.0, 16.0], "16x16", None]
    for bad_shape in bad_shapes:
        msgs += [(with_header(shape=bad_shape), "bad_shape")] * 3
    for dtype in ("uint64", "complex64", ">u2", None, 7):
        msgs += [(with_header(dtype=dtype), "bad_dtype")] * 3
    for key, value in (("seq", "1"), ("seq", 1.5), ("ts_ns", "now"), ("ts_ns", 1e18), ("meta", [1]), ("meta", "x")):
        msgs += [(with_header(**{key: value}), "bad_header")] * 3
    return msgs


def test_fuzz_malformed_input(run: Path) -> None:
    """Hundreds of malformed messages on the input and the request path: each is counted (and each request
    answered) as an error of the right kind, the server lives on and still denoises a valid frame correctly."""
    msgs = malformed_messages()
    assert len(msgs) >= 300
    expected = Counter(code for _, code in msgs if code is not None)
    frame = camera_frames(1)[0]

    with running_server(run, config()) as server, StreamClient(server.endpoints, timeout=10) as client:
        ctx = zmq.Context()
        push, req, dealer = ctx.socket(zmq.PUSH), ctx.socket(zmq.REQ), ctx.socket(zmq.DEALER)
        try:
            push.connect(server.endpoints["input"])
            for parts, _ in msgs:
                push.send_multipart(parts)
            wait_for(lambda: client.status()["errors"] == len(msgs), f"{len(msgs)} errors counted")
            after_push = client.status()

            req.connect(server.endpoints["request"])
            for parts, code in msgs:
                req.send_multipart(parts)
                assert req.poll(10_000), f"no reply to {[p[:40] for p in parts]}"
                reply = req.recv_multipart()
                header = decode_header(reply[0])
                assert header["type"] == "error" and header["message"].startswith("expected")
                assert code is None or header["error"] == code, (code, header)

            dealer.connect(server.endpoints["request"])  # no empty delimiter: counted, never answered
            for _ in range(5):
                dealer.send_multipart([b"no-delimiter", b"x"])
            wait_for(lambda: client.status()["errors"] == 2 * len(msgs) + 5, "the envelope errors")
        finally:
            for sock in (push, req, dealer):
                sock.close(linger=0)
            ctx.term()

        client.wait_subscribed()
        client.send(frame, seq=1000)
        pushed = client.receive()
        result = client.request(frame, seq=1001)
        status = client.status()

    assert after_push["frames_in"] == len(msgs) and after_push["frames_out"] == 0
    assert after_push["errors_by_kind"] == dict(expected)
    assert status["frames_in"] == 2 * len(msgs) + 2 and status["frames_out"] == 2
    assert status["errors_by_kind"] == {**{k: 2 * v for k, v in expected.items()}, "bad_envelope": 5}
    assert status["errors"] == 2 * len(msgs) + 5
    reference = server.denoiser(frame)
    assert pushed.seq == 1000 and np.array_equal(pushed.pixels, reference)
    assert result.seq == 1001 and np.array_equal(result.pixels, reference)



def test_lossless_batches_waiting_frames_identically(run: Path) -> None:
    """Lossless mode with frames waiting: small frames run as engine batches of max_batch, and every frame
    still comes out once, in order, bit-identical to denoising it on its own."""
    frames = camera_frames(40, size=96, seed=5)

    with running_server(run, config(mode="lossless", max_batch=4, queue_size=8)) as server, \
            StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for i, frame in enumerate(frames):
            client.send(frame, seq=i)
        results = [client.receive() for _ in frames]
        status = client.status()

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
