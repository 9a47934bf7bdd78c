"""Controlling the server: commands, shutdown, signals, its addresses freed; and malformed input of
every kind, which never stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from serverkit import NAMES, assert_rebindable, camera_frames, config
from waiting import GENEROUS_S, Finishing, wait_for

from streamer.client import StreamClient
from streamer.protocol import decode_header, encode_frame
from streamer.server import Server, ServerThread, running_server


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    """The session's tiny trained run folder."""
    return trained_run["run"]


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
            assert client.control("shutdown") == {"ok": True}
        thread.join(GENEROUS_S)  # (it would serve forever otherwise)
        assert not thread.is_alive(), f"serve_forever had not returned {GENEROUS_S:g} s after the shutdown command"
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





def test_a_server_asked_to_stop_while_it_starts_stops_once_started(run: Path) -> None:
    """A server started in the background (the napari widget's) and asked to stop before it has even been made:
    it stops as soon as it has started, instead of serving on in a thread nobody holds."""
    made, go = threading.Event(), threading.Event()

    def make() -> Server:
        made.set()
        go.wait(GENEROUS_S)  # (loading and compiling a model takes seconds)
        return Server(run, config())

    runner = ServerThread(make, background=True)
    assert made.wait(GENEROUS_S)
    stopping = Finishing("stop()", runner.stop, GENEROUS_S)
    go.set()
    assert stopping.result() is True and runner.error is None
    assert runner.server is not None and runner.server.stopping
    assert_rebindable(runner.server.endpoints)
