"""Faults a real server must survive, over real sockets on 127.0.0.1: whatever arrives on a socket, it keeps
serving and says what was wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zmq
from serverkit import camera_frames, config

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
    from streamer.engines import create_engine
    from streamer.model import ModelCard
    from streamer.pipeline import Denoiser

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
    from streamer.engines import create_engine
    from streamer.model import ModelCard
    from streamer.pipeline import Denoiser

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
