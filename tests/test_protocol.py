"""The wire protocol: frames survive encode/decode bit for bit, and every malformed message is named."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import zmq

from streamer.protocol import (
    DTYPES,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    decode_frame,
    decode_header,
    encode_error,
    encode_frame,
)

MAX = 1 << 20


def sample(dtype: str, shape: tuple[int, int] = (5, 7)) -> np.ndarray:
    """A frame of ``dtype`` that spans the type's range (extremes included) so no byte pattern is missed."""
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        a = rng.standard_normal(shape).astype(dtype) * np.float32(1e3)
        a.flat[0], a.flat[1] = np.finfo(dtype).max, np.finfo(dtype).tiny
        return a
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    a.flat[0], a.flat[1] = info.min, info.max
    return a


def raw_parts(pixels: np.ndarray, **extra: Any) -> list[bytes]:
    """``[header, pixels]`` as bytes, the header built from ``encode_frame`` and updated with ``extra``
    (a value of None removes the key)."""
    head, body = encode_frame(pixels, seq=3)
    header = json.loads(head)
    for key, value in extra.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    return [json.dumps(header).encode(), np.ascontiguousarray(body).tobytes()]


def expect_error(parts: list[Any], code: str, *fragments: str, max_bytes: int = MAX, min_side: int = 1
                 ) -> ProtocolError:
    """Decode ``parts``; it must raise ProtocolError ``code`` whose message holds every fragment."""
    with pytest.raises(ProtocolError) as info:
        decode_frame(parts, max_bytes, min_side)
    exc = info.value
    assert exc.code == code, f"expected code {code}, got {exc.code}: {exc}"
    assert str(exc).startswith("expected"), str(exc)
    for fragment in fragments:
        assert fragment in str(exc), f"{fragment!r} not in {exc}"
    return exc


# --- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_bit_exact(dtype: str) -> None:
    """Every wire dtype decodes to the same bytes, shape and dtype, with seq, ts_ns and meta kept."""
    pixels = sample(dtype)
    head, body = encode_frame(pixels, seq=41, ts_ns=123_456_789, meta={"stage": "x", "n": [1, 2]})

    msg = decode_frame([head, np.ascontiguousarray(body).tobytes()], MAX)

    assert msg.pixels.dtype == np.dtype(dtype) and msg.pixels.shape == pixels.shape
    assert msg.pixels.tobytes() == pixels.tobytes()
    assert msg.seq == 41 and msg.header["ts_ns"] == 123_456_789
    assert msg.header["meta"] == {"stage": "x", "n": [1, 2]} and msg.header["v"] == PROTOCOL_VERSION


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_views_the_buffer_without_copying(dtype: str) -> None:
    """The decoded pixels are a view of the received buffer, read-only when the buffer is."""
    pixels = sample(dtype)
    head, body = encode_frame(pixels)
    writable = bytearray(np.ascontiguousarray(body).tobytes())
    frozen = bytes(writable)

    view = decode_frame([head, writable], MAX).pixels

    assert np.shares_memory(view, np.frombuffer(writable, np.uint8))
    writable[: view.itemsize] = bytes(view.itemsize)  # zero the first pixel in the buffer ...
    assert view.flat[0] == 0  # ... and the decoded frame sees it
    assert not decode_frame([head, frozen], MAX).pixels.flags.writeable


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_through_zeromq_frames(dtype: str) -> None:
    """Frames sent zero-copy over a real ZeroMQ socket decode from zmq.Frame parts bit for bit."""
    pixels = sample(dtype, (33, 17))
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://protocol-test")
        b.connect("inproc://protocol-test")
        a.send_multipart(encode_frame(pixels, seq=5), copy=False)
        assert b.poll(5000)
        frames = b.recv_multipart(copy=False)
        msg = decode_frame(frames, MAX)
        assert msg.pixels.tobytes() == pixels.tobytes() and msg.seq == 5
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


def test_big_endian_input_is_sent_little_endian() -> None:
    """A big-endian array is converted: the wire is little-endian and the values are unchanged."""
    pixels = sample("uint16").astype(">u2")
    head, body = encode_frame(pixels)

    msg = decode_frame([head, np.ascontiguousarray(body).tobytes()], MAX)

    assert np.array_equal(msg.pixels, pixels)
    assert np.ascontiguousarray(body).tobytes() == pixels.astype("<u2").tobytes()


def test_encode_rejects_unknown_dtype() -> None:
    """encode_frame refuses a pixel type the protocol does not carry, naming the accepted ones."""
    with pytest.raises(ProtocolError) as info:
        encode_frame(np.zeros((4, 4), np.complex64))

    assert info.value.code == "bad_dtype"
    assert "uint16" in str(info.value) and "complex64" in str(info.value)


def test_error_header_round_trip() -> None:
    """An error message's header decodes with its type, code, message and seq."""
    header = decode_header(encode_error("bad_shape", "expected 2-D", seq=9))

    assert header == {"v": PROTOCOL_VERSION, "type": "error", "seq": 9, "error": "bad_shape",
                      "message": "expected 2-D"}


# --- malformed messages ---------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 3, 5])
def test_wrong_part_count(count: int) -> None:
    """A message with other than two parts is bad_parts, naming the count that came."""
    head, body = raw_parts(sample("uint16"))
    parts = ([head, body] + [b"x"] * count)[:count]

    expect_error(parts, "bad_parts", "expected 2 message parts", f"got {count}")


@pytest.mark.parametrize("head", [b"\xff\xfe\x00garbage", b"{not json", b"", b'{"v": 1,'])
def test_non_json_header(head: bytes) -> None:
    """A first part that is not JSON is bad_header."""
    expect_error([head, b"\0" * 8], "bad_header", "expected a UTF-8 JSON object", "got undecodable bytes")


@pytest.mark.parametrize(("head", "kind"), [(b"[1, 2]", "list"), (b"7", "int"), (b'"v"', "str"),
                                            (b"null", "NoneType")])
def test_json_that_is_not_an_object(head: bytes, kind: str) -> None:
    """A JSON header that is not an object is bad_header, naming the JSON type that came."""
    expect_error([head, b"\0" * 8], "bad_header", "expected a JSON object", f"got a JSON {kind}")


def test_deeply_nested_json_is_a_protocol_error() -> None:
    """A header nested deeper than the JSON parser's recursion limit is bad_header, not a crash."""
    expect_error([b"[" * 60_000, b""], "bad_header", "expected", "RecursionError")


def test_oversized_header() -> None:
    """A header beyond the header size limit is bad_header, naming the limit and the size."""
    head = json.dumps({"v": 1, "pad": "x" * MAX_HEADER_BYTES}).encode()

    expect_error([head, b""], "bad_header", f"at most {MAX_HEADER_BYTES} bytes", f"got {len(head)} bytes")


@pytest.mark.parametrize("version", [2, 0, "1", 1.5, None])
def test_wrong_or_missing_version(version: Any) -> None:
    """A missing or other protocol version is bad_version, naming the one that came."""
    parts = raw_parts(sample("uint16"), v=version)

    exc = expect_error(parts, "bad_version", f"expected protocol version v={PROTOCOL_VERSION}",
                       f"got v={version!r}")
    assert exc.seq == 3


@pytest.mark.parametrize("shape", [[5.0, 7.0], ["5", "7"], "5x7", None, [True, 7], {"h": 5}])
def test_shape_not_a_list_of_integers(shape: Any) -> None:
    """A shape that is not a list of integers is bad_shape, echoing what came."""
    expect_error(raw_parts(sample("uint16"), shape=shape), "bad_shape", "expected 'shape' as a list of integers",
                 f"got {shape!r}")


@pytest.mark.parametrize("shape", [[5, 7, 1], [35], []])
def test_shape_not_2d(shape: list[int]) -> None:
    """A 1-D or 3-D (or empty) shape is bad_shape, naming the dimensionality that came."""
    expect_error(raw_parts(sample("uint16"), shape=shape), "bad_shape", "expected a 2-D frame", f"got {len(shape)}-D")


@pytest.mark.parametrize("shape", [[0, 7], [5, 0], [-5, -7]])
def test_zero_or_negative_shape(shape: list[int]) -> None:
    """A zero or negative side is bad_shape."""
    expect_error(raw_parts(sample("uint16"), shape=shape), "bad_shape", "expected height and width >= 1",
                 f"got shape {shape}")


def test_shape_below_min_side() -> None:
    """A side below the server's minimum (the model's size multiple) is bad_shape."""
    pixels = np.zeros((1, 8), np.uint16)
    head, body = encode_frame(pixels)

    expect_error([head, body.tobytes()], "bad_shape", "expected height and width >= 2", "[1, 8]", min_side=2)


@pytest.mark.parametrize("dtype", ["complex64", "float16", "uint64", ">u2", None, 16])
def test_unknown_dtype(dtype: Any) -> None:
    """A dtype outside DTYPES (or none) is bad_dtype, listing the accepted ones and echoing what came."""
    expect_error(raw_parts(sample("uint16"), dtype=dtype), "bad_dtype", "expected 'dtype' one of",
                 ", ".join(DTYPES), f"got {dtype!r}")


@pytest.mark.parametrize("delta", [-1, +1, -70])
def test_buffer_length_mismatch(delta: int) -> None:
    """A pixel buffer shorter or longer than the shape and dtype need is bad_length, naming both sizes."""
    head, body = raw_parts(sample("uint16"))
    body = body[:delta] if delta < 0 else body + b"\0" * delta

    expect_error([head, body], "bad_length", "expected 70 bytes for shape [5, 7] uint16",
                 f"got a buffer of {len(body)} bytes")


def test_declared_shape_beyond_max_bytes() -> None:
    """A header declaring a frame larger than max_bytes is oversized before any buffer is checked."""
    parts = raw_parts(sample("uint16"), shape=[100_000, 100_000])

    exc = expect_error(parts, "oversized", f"expected a frame of at most {MAX} bytes",
                       f"{100_000 * 100_000 * 2} bytes")
    assert exc.seq == 3


def test_buffer_beyond_max_bytes() -> None:
    """A pixel buffer larger than max_bytes is oversized, whatever the header says."""
    head, _ = raw_parts(sample("uint16"))

    expect_error([head, b"\0" * (MAX + 2)], "oversized", f"at most {MAX} bytes", f"buffer {MAX + 2} bytes")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_pixels(dtype: str, bad: float) -> None:
    """NaN or infinite pixels in a float frame are not_finite, counting them."""
    pixels = sample(dtype)
    pixels[1, 2] = pixels[3, 4] = bad

    head, body = encode_frame(pixels, seq=8)

    exc = expect_error([head, body.tobytes()], "not_finite", "expected finite pixel values", "got 2 NaN/infinite")
    assert exc.seq == 8


@pytest.mark.parametrize("seq", ["7", 1.5, True, [7]])
def test_bad_seq(seq: Any) -> None:
    """A seq that is not an integer is bad_header, echoing what came."""
    expect_error(raw_parts(sample("uint16"), seq=seq), "bad_header", "expected an integer 'seq'", f"got {seq!r}")


@pytest.mark.parametrize("ts", ["now", 1.5, False, [1]])
def test_bad_timestamp(ts: Any) -> None:
    """A ts_ns that is not an integer is bad_header, echoing what came."""
    expect_error(raw_parts(sample("uint16"), ts_ns=ts), "bad_header", "expected an integer 'ts_ns'", f"got {ts!r}")


@pytest.mark.parametrize(("meta", "kind"), [([1, 2], "list"), ("note", "str"), (3, "int")])
def test_bad_meta(meta: Any, kind: str) -> None:
    """A meta that is not a JSON object is bad_header, naming the type that came."""
    expect_error(raw_parts(sample("uint16"), meta=meta), "bad_header", "expected 'meta' as a JSON object",
                 f"got {kind}")


def test_optional_fields_may_be_absent() -> None:
    """A header with only v, shape and dtype decodes (seq None)."""
    pixels = sample("uint8")
    head = json.dumps({"v": 1, "shape": list(pixels.shape), "dtype": "uint8"}).encode()

    msg = decode_frame([head, pixels.tobytes()], MAX)

    assert msg.seq is None and np.array_equal(msg.pixels, pixels)
