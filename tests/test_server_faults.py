"""Faults a real server must survive, over real sockets on 127.0.0.1: whatever arrives on a socket, it keeps
serving and says what was wrong."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from serverkit import camera_frames, config
from waiting import GENEROUS_S

from streamer.client import StreamClient
from streamer.protocol import ProtocolError, decode_header
from streamer.server import running_server


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    return trained_run["run"]


def control_exchange(address: str, parts: list[bytes]) -> dict:
    """Send ``parts`` as one message on a REQ socket and return the reply."""
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    try:
        req.connect(address)
        req.send_multipart(parts)
        assert req.poll(5000), "no reply from the control socket"
        return json.loads(req.recv())
    finally:
        req.close(linger=0)
        ctx.term()


@pytest.mark.parametrize(("parts", "expected"), [
    ([b'{"cmd": "status"}', b"extra"], "expected one part (a JSON object), got 2 parts"),
    ([b"a", b"b", b"c", b"d"], "expected one part (a JSON object), got 4 parts"),
    ([b'{"cmd": "status", "pad": "' + b"x" * 70_000 + b'"}'], "expected at most 65536 bytes, got 70028"),
])
def test_a_malformed_control_message_is_answered_and_the_server_keeps_serving(run: Path, parts: list[bytes],
                                                                              expected: str) -> None:
    with running_server(run, config()) as server, StreamClient(server.endpoints) as client:
        reply = control_exchange(server.endpoints["control"], parts)
        status = client.status()
        frame = camera_frames(1)[0]
        result = client.request(frame)

    assert reply["ok"] is False and expected in reply["error"]
    assert status["errors_by_kind"] == {"bad_control": 1}
    assert result.pixels.shape == frame.shape


@pytest.mark.parametrize("version", ["true", "1.0", '"1"'])
def test_a_version_that_only_looks_like_1_is_refused(version: str) -> None:
    head = ('{"v": ' + version + ', "seq": 1, "shape": [8, 8], "dtype": "uint16"}').encode()

    with pytest.raises(ProtocolError, match="expected protocol version v=1") as caught:
        decode_header(head)
    assert caught.value.code == "bad_version"


def test_a_large_frame_runs_its_tiles_a_few_at_a_time_with_the_same_result(run: Path) -> None:
    """The engine never sees more than max_tiles tiles at once, however large the frame; the stitched frame is
    the one all tiles at once give."""
    from streamer.core.card import ModelCard
    from streamer.denoiser import Denoiser
    from streamer.engines import create_engine

    card = ModelCard.load(run)
    frame = camera_frames(1, size=160)[0]
    shapes: list[tuple[int, ...]] = []
    whole = Denoiser(card, create_engine("onnxruntime", card, precision="fp32", num_threads=1), tile_size=48)
    chunked = Denoiser(card, create_engine("onnxruntime", card, precision="fp32", num_threads=1), tile_size=48,
                       max_tiles=3)
    infer = chunked.engine.infer
    chunked.engine.infer = lambda batch: (shapes.append(batch.shape), infer(batch))[1]  # type: ignore[method-assign]

    a, b = whole(frame), chunked(frame)

    n_tiles = whole.plan(frame.shape).batch_shape[0]
    assert n_tiles > 3 and {s[0] for s in shapes} == {3} and len(shapes) == -(-n_tiles // 3)
    assert (a == b).all()


def test_compiled_shapes_are_bounded_and_the_least_recently_used_goes(run: Path) -> None:
    """Every new frame shape compiles; beyond max_shapes the least recently used one is released, so memory
    does not grow with the shapes seen, and a released shape still denoises the same when it comes back."""
    from streamer.core.card import ModelCard
    from streamer.denoiser import Denoiser
    from streamer.engines import create_engine

    card = ModelCard.load(run)
    den = Denoiser(card, create_engine("openvino", card, precision="fp32", num_threads=1), max_shapes=2)
    frames = {size: camera_frames(1, size=size)[0] for size in (32, 48, 64)}
    first = den(frames[32])
    den(frames[48])
    den(frames[32])  # used again: 48 is now the least recently used

    den(frames[64])

    assert sorted(den.shapes) == [(32, 32), (64, 64)] and den.evicted == 1
    assert {tuple(s[-2:]) for s in den.engine.info()["shapes"]} == {(32, 32), (64, 64)}
    assert (den(frames[48]) == den(frames[48])).all() and (den(frames[32]) == first).all()
    assert den.evicted == 3 and len(den.shapes) == 2


@pytest.mark.parametrize(("image", "reason"), [
    (np.zeros((32, 32, 3), np.uint8), "expected a single-channel 2-D image, got shape (32, 32, 3)"),
    (np.zeros((32, 32, 4), np.uint8), "expected a single-channel 2-D image, got shape (32, 32, 4)"),
    (np.zeros((32, 32), np.int8), "got int8"),
    (np.zeros((32, 32), bool), "got bool"),
    (np.zeros((32, 32), np.float16), "got float16"),
    (np.zeros((32, 32), np.uint64), "got uint64"),
    (np.zeros((32, 32), np.uint8), "expected uint16 frames (the bit depth the model was trained on), got uint8"),
])
def test_the_hook_keeps_any_image_it_cannot_denoise_raw_and_never_raises(run: Path, image: np.ndarray,
                                                                         reason: str) -> None:
    from streamer.micromanager import denoise_hook

    with running_server(run, config()) as server, denoise_hook(server.endpoints) as hook:
        out, meta = hook(image, {"ImageNumber": "0"})
        _, good_meta = hook(camera_frames(1, size=32)[0], {})

    assert out is image and meta["n2n-denoised"] is False and reason in meta["n2n-error"]
    assert good_meta["n2n-denoised"] is True and hook.errors == 1 and hook.denoised == 1


def test_the_hook_stops_waiting_on_a_dead_server_and_comes_back_when_it_does(run: Path) -> None:
    """Circuit breaker: after one frame that waited the timeout, frames are kept raw at once until the next
    try; once the server answers, frames are denoised again."""
    from streamer.endpoints import Endpoints
    from streamer.micromanager import denoise_hook

    with socket_free_address() as address:
        frames = camera_frames(20, size=32)
        hook = denoise_hook(address, timeout_s=0.3)
        results = [hook(f, {})[1] for f in frames]
        assert hook.errors == 20 and hook.skipped >= 18, "only the first frame(s) may wait for the timeout"
        assert "server unavailable" in results[-1]["n2n-error"]
        endpoints = Endpoints.local().model_dump()
        endpoints["request"] = address
        with running_server(run, config(endpoints=endpoints)):
            deadline = time.monotonic() + 20
            while hook.denoised == 0 and time.monotonic() < deadline:
                hook(frames[0], {})
                time.sleep(0.05)
        hook.close()

    assert hook.denoised >= 1 and hook._backoff_s == 0.0


@contextlib.contextmanager
def socket_free_address() -> Iterator[str]:
    """A loopback TCP address nothing listens on (yet)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"tcp://127.0.0.1:{port}"


def test_a_stalled_subscriber_in_lossless_mode_never_stops_the_server(run: Path) -> None:
    """A viewer subscribes and never reads: requests are still answered, stats still flow, and past the wait
    frames are dropped and counted (slow_subscriber) instead of freezing everything."""
    import threading

    with running_server(run, config(mode="lossless", slow_subscriber_timeout_s=0.3)) as server, \
            StreamClient(server.endpoints) as client:
        ctx = zmq.Context()
        stalled = ctx.socket(zmq.SUB)
        stalled.setsockopt(zmq.RCVHWM, 1)
        stalled.setsockopt(zmq.RCVBUF, 4096)
        stalled.connect(server.endpoints["output"])
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            client.wait_subscribed()
            frames = camera_frames(4, size=64)
            done = threading.Event()

            def produce() -> None:
                for i in range(400):
                    client_push.send(frames[i % 4], seq=i)
                done.set()

            with StreamClient(server.endpoints) as client_push:
                producer = threading.Thread(target=produce, daemon=True)
                producer.start()
                deadline = time.monotonic() + 60
                while server.stats.drops_by_reason.get("slow_subscriber", 0) == 0:
                    assert time.monotonic() < deadline, "frames were never dropped for the stalled subscriber"
                    time.sleep(0.01)
                # answered while the subscriber still stalls (it never reads: a server blocked on it never answers)
                answer = client.request(frames[0], timeout=GENEROUS_S)
                assert done.wait(60), "the producer was blocked for good"
                deadline = time.monotonic() + 30
                while (status := client.status())["frames_in"] < 401 or status["queue_depth"]:
                    assert time.monotonic() < deadline, f"frames stopped flowing: {status}"
                    time.sleep(0.05)
        finally:
            stalled.close(linger=0)
            ctx.term()

    assert answer.pixels.shape == frames[0].shape
    assert status["drops_by_reason"]["slow_subscriber"] > 0
    assert status["frames_out"] + status["drops"] == status["frames_in"] == 401  # each frame counted once


def test_one_peer_subscribing_many_times_counts_once_and_frames_to_nobody_are_not_delivered(run: Path) -> None:
    with running_server(run, config(mode="lossless")) as server, StreamClient(server.endpoints) as client:
        client.send(camera_frames(1)[0], seq=0)  # nobody subscribed yet
        deadline = time.monotonic() + 10
        while (before := client.status())["frames_in"] + before["queue_depth"] < 1 or before["queue_depth"]:
            assert time.monotonic() < deadline, before
            time.sleep(0.02)
        ctx = zmq.Context()
        greedy = ctx.socket(zmq.SUB)
        try:
            greedy.connect(server.endpoints["output"])
            for _ in range(1000):
                greedy.setsockopt(zmq.SUBSCRIBE, b"")
            deadline = time.monotonic() + 10
            while (status := client.status())["subscribers"] < 1 or status["frames_in"] < 1:
                assert time.monotonic() < deadline, status
                time.sleep(0.02)
            time.sleep(0.2)  # the rest of the 1,000 subscriptions arrive
            status = client.status()
        finally:
            greedy.close(linger=0)
            ctx.term()

    assert before["drops_by_reason"] == {"no_subscriber": 1} and before["frames_out"] == 0
    assert status["subscribers"] == 1


def test_a_message_of_many_parts_is_refused_and_counted_on_input_and_request(run: Path) -> None:
    with running_server(run, config()) as server, StreamClient(server.endpoints, errors=True) as client:
        ctx = zmq.Context()
        push, dealer = ctx.socket(zmq.PUSH), ctx.socket(zmq.DEALER)
        try:
            push.connect(server.endpoints["input"])
            dealer.connect(server.endpoints["request"])
            push.send_multipart([b"x" * 1024] * 150)
            dealer.send_multipart([b"", *[b"x" * 1024] * 150])
            deadline = time.monotonic() + 10
            while sum((status := client.status())["errors_by_kind"].values()) < 2:
                assert time.monotonic() < deadline, status
                time.sleep(0.02)
            result = client.request(camera_frames(1)[0])
        finally:
            push.close(linger=0)
            dealer.close(linger=0)
            ctx.term()

    assert status["errors_by_kind"] == {"bad_parts": 2}
    assert result.pixels.shape == (64, 64)


def test_swap_takes_only_model_folders_inside_the_models_root_and_commands_can_be_turned_off(
        run: Path, tmp_path: Path) -> None:
    import shutil

    inside = tmp_path / "root" / "m"
    shutil.copytree(run, inside)
    with running_server(run, config(models_root=str(tmp_path / "root"))) as server, \
            StreamClient(server.endpoints) as client:
        with pytest.raises(RuntimeError, match=r"swap: expected a model folder inside .*root \(models_root\), got "
                                               r"'\.\./elsewhere'"):
            client.control("swap", model="../elsewhere")
        with pytest.raises(RuntimeError, match="expected a model folder inside"):
            client.control("swap", model=str(run))  # an absolute path outside
        reply = client.control("swap", model="m")  # a name inside the root
    with running_server(run, config(control_commands=["status"])) as server, \
            StreamClient(server.endpoints) as client:
        with pytest.raises(RuntimeError, match=r"command 'shutdown' is turned off on this server"):
            client.control("shutdown")
        status = client.status()

    assert reply["ok"] and reply["status"]["swaps"] == 1
    assert status["errors_by_kind"] == {"control_refused": 1} and status["swaps"] == 0


def test_a_model_card_pointing_out_of_its_folder_is_refused(run: Path, tmp_path: Path) -> None:
    import shutil

    from streamer.core.card import CardError, ModelCard

    copy = tmp_path / "m"
    shutil.copytree(run, copy)
    card = json.loads((copy / "model.json").read_text())
    card["artifacts"]["onnx"]["path"] = "../../etc/passwd"
    (copy / "model.json").write_text(json.dumps(card))

    with pytest.raises(CardError, match=r"expected a file name inside the model folder, got '\.\./\.\./etc/passwd'"):
        ModelCard.load(copy)


def test_a_curve_server_answers_a_client_with_the_key_and_refuses_and_counts_one_without(run: Path,
                                                                                         tmp_path: Path) -> None:
    from streamer.security import ClientKeys, make_keys

    make_keys(tmp_path / "keys")
    frame = camera_frames(1)[0]
    with running_server(run, config(curve_keys=str(tmp_path / "keys"))) as server:
        with StreamClient(server.endpoints, keys=ClientKeys.load(tmp_path / "keys")) as trusted:
            result = trusted.request(frame)
            with StreamClient(server.endpoints, timeout=1.0) as stranger, pytest.raises(TimeoutError):
                stranger.request(frame)
            deadline = time.monotonic() + 10
            while "auth_refused" not in (status := trusted.status())["errors_by_kind"]:
                assert time.monotonic() < deadline, status
                time.sleep(0.05)

    assert result.pixels.shape == frame.shape and status["frames_in"] == 1


def test_a_curve_server_streams_to_a_subscribed_client_and_counts_it(run: Path, tmp_path: Path) -> None:
    from streamer.security import ClientKeys, make_keys

    make_keys(tmp_path / "keys")
    frame = camera_frames(1)[0]
    with running_server(run, config(mode="lossless", curve_keys=str(tmp_path / "keys"))) as server, \
            StreamClient(server.endpoints, keys=ClientKeys.load(tmp_path / "keys")) as client:
        client.wait_subscribed()
        client.send(frame, seq=5)
        back = client.receive()
        status = client.status()

    assert back.seq == 5 and status["subscribers"] == 1 and status["frames_out"] == 1
    assert "auth_refused" not in status["errors_by_kind"]


def test_an_address_other_machines_reach_needs_keys_or_an_explicit_insecure(run: Path) -> None:
    from streamer.endpoints import Endpoints

    exposed = {**Endpoints.local().model_dump(), "input": "tcp://0.0.0.0:*"}

    with pytest.raises(OSError, match=r"binding input tcp://0\.0\.0\.0:\* makes the server reachable from other "
                                      r"machines: give CURVE keys"):
        with running_server(run, config(endpoints=exposed)):
            pass
    with running_server(run, config(endpoints=exposed, insecure=True)) as server, \
            StreamClient(server.endpoints) as client:
        assert client.status()["frames_in"] == 0


def test_after_a_kill_9_and_a_restart_the_client_reports_exactly_the_frames_lost(run: Path, tmp_path: Path) -> None:
    """Frames pushed to a frozen server that is then killed never come back; the client, which keeps the
    order of what it pushed, counts exactly those once a later frame's result arrives from the restarted one."""
    import os
    import signal as sig

    from bench.processes import serve_command, spawn
    from streamer.endpoints import Endpoints

    endpoints = Endpoints.local("ipc", tmp_path)  # fixed addresses: the restarted server binds the same
    cmd = serve_command(run, endpoints, mode="lossless", precision="fp32", threads=1)
    frames = camera_frames(3)
    with StreamClient(endpoints, timeout=20) as client:
        first = spawn(cmd, tmp_path, "first")
        try:
            client.wait_subscribed()
            for i in range(5):
                client.send(frames[i % 3], seq=i)
            assert [client.receive().seq for _ in range(5)] == list(range(5))
            os.kill(first.pid, sig.SIGSTOP)
            for i in range(5, 8):  # into a frozen server: accepted by its sockets, never denoised
                client.send(frames[i % 3], seq=i)
            os.kill(first.pid, sig.SIGKILL)
        finally:
            first.stop()
        with spawn(cmd, tmp_path, "second"):
            client.wait_subscribed()
            client.send(frames[0], seq=8)
            back = client.receive()
        accounting = client.accounting()

    assert back.seq == 8
    assert accounting == {"sent": 9, "acknowledged": 6, "lost": 3, "outstanding": 0}
