"""The wire protocol: multipart ZeroMQ messages, a small JSON header and the raw pixels.

A frame message has two parts::

    part 1  UTF-8 JSON object, the header
            {"v": 1, "seq": 17, "shape": [512, 512], "dtype": "uint16",
             "ts_ns": 1732530000123456789, "meta": {...}}
    part 2  the pixels: shape[0] * shape[1] * itemsize bytes, C order (row-major),
            little-endian, no padding

``v`` (protocol version) and ``shape`` and ``dtype`` are required; ``seq`` (an integer the
sender chooses, echoed back), ``ts_ns`` (capture time, ns since the Unix epoch) and ``meta``
(any JSON object, echoed back) are optional. Denoised frames and replies carry the same two
parts, with ``"type": "frame"`` and per-stage timestamps (ns since the epoch) in the header::

    "stages": {"received": ..., "preprocessed": ..., "inferred": ..., "sent": ...}

and, only when the Denoiser's checks flagged the frame, ``"flags": ["float_path"]`` (denoised by the float32
model: the frame left the range the reduced precision was checked on), ``"flags": ["raw:output_range"]`` (the
pixels are the RAW frame: the denoised output failed its check) or ``"flags": ["raw:no_model"]`` (the pixels are
the RAW frame, in its own dtype: the server's model set has no model for the frame's channel; its header then says
``"engine": "none", "model": ""``); any ``raw:`` flag means not denoised. An optional field of version 1: readers
that do not know it ignore it.

``meta.stream`` (any JSON value) names the stream a frame belongs to, for a model that sees the frames before
the current one (``input_frames`` K > 1 in its card): the server keeps each stream's last K−1 frames (frames
without it make one default stream; requests are kept per caller and stream), and a gap in ``seq``, a change of
shape or dtype, or a model swap starts the stream afresh (see streamer/core/history.py). Send consecutive ``seq``
numbers per stream. The pycromanager hook sends the image's place without time
(:func:`streamer.core.streams.stream_key`: ``{"channel": "GFP", "z": 3}``).

``meta.channel`` (text: the channel's name, e.g. the Micro-Manager ``Channel`` configuration ``"GFP"``) routes
the frame to its channel's model on a server of a model set (``n2n serve --model DAPI=runs/dapi --model
GFP=runs/gfp``, see streamer/core/modelset.py); without it, ``meta.stream.channel`` does. A frame that names no
channel gets the set's default model; a channel the set gives no model (and no default) comes back raw, flagged
``raw:no_model``. A frame's history is also kept per channel: two channels never share one.

Errors are a one-part message (or two, with an empty second part on the reply path)::

    {"v": 1, "type": "error", "seq": 17, "error": "bad_shape", "message": "..."}

On the output (XPUB) and stats (PUB) sockets a topic part comes first: ``frame`` (a pushed frame,
denoised), ``reply`` (a copy of a request's result, for viewers), ``error`` or ``stats``.

The view socket (XPUB, for viewers) sends each denoised frame with the raw frame it came from, in
one four-part message, while at least one viewer subscribes::

    b"view", header (the denoised frame's, plus "raw": {"shape": [...], "dtype": "uint16"}),
    raw pixels, denoised pixels

Never pickle: any language with ZeroMQ and JSON can speak this.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .core.messages import decode_pixels

__all__ = [
    "PROTOCOL_VERSION",
    "DTYPES",
    "ProtocolError",
    "Message",
    "encode_frame",
    "decode_frame",
    "encode_error",
    "decode_header",
    "TOPIC_FRAME",
    "TOPIC_ERROR",
    "TOPIC_STATS",
    "TOPIC_REPLY",
    "TOPIC_VIEW",
]

PROTOCOL_VERSION = 1
#: Pixel types accepted on the wire (little-endian).
DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_HEADER_BYTES = 64 * 1024
TOPIC_FRAME = b"frame"
TOPIC_ERROR = b"error"
TOPIC_STATS = b"stats"
TOPIC_REPLY = b"reply"  # request results on the output: viewers may watch them, stream consumers never get them
TOPIC_VIEW = b"view"  # raw and denoised pixels of one frame, on the view socket


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``code`` names the kind (for counters)."""

    def __init__(self, code: str, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq


@dataclass
class Message:
    """A decoded frame message: the header and a read-only view of the pixels (no copy)."""

    header: dict[str, Any]
    pixels: np.ndarray
    received_ns: int = field(default_factory=time.time_ns)

    @property
    def seq(self) -> int | None:
        seq = self.header.get("seq")
        return seq if isinstance(seq, int) else None


def _buffer(pixels: np.ndarray) -> np.ndarray:
    a = np.asarray(pixels)
    if a.dtype.name not in DTYPES:
        raise ProtocolError("bad_dtype", f"expected pixels of one of {', '.join(DTYPES)}, got {a.dtype}")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def encode_frame(
    pixels: np.ndarray,
    seq: int | None = None,
    ts_ns: int | None = None,
    meta: Mapping[str, Any] | None = None,
    **extra: Any,
) -> list[Any]:
    """``[header bytes, pixel buffer]`` ready for ``socket.send_multipart(parts, copy=False)``."""
    a = _buffer(pixels)
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "shape": list(a.shape), "dtype": a.dtype.name,
                              "ts_ns": time.time_ns() if ts_ns is None else int(ts_ns)}
    if seq is not None:
        header["seq"] = int(seq)
    if meta:
        header["meta"] = dict(meta)
    header.update(extra)
    return [json.dumps(header, separators=(",", ":")).encode(), a]


def encode_error(code: str, message: str, seq: int | None = None) -> bytes:
    """The JSON header of an error message."""
    return json.dumps({"v": PROTOCOL_VERSION, "type": "error", "seq": seq, "error": code, "message": message},
                      separators=(",", ":")).encode()


def decode_header(part: bytes | memoryview) -> dict[str, Any]:
    """Parse and check a JSON header (version, and nothing else)."""
    if len(part) > MAX_HEADER_BYTES:
        raise ProtocolError("bad_header", f"expected a JSON header of at most {MAX_HEADER_BYTES} bytes, "
                                          f"got {len(part)} bytes")
    try:
        header = json.loads(bytes(part))
    except (ValueError, RecursionError) as exc:  # also: too deeply nested, an integer of > 4300 digits
        raise ProtocolError("bad_header", f"expected a UTF-8 JSON object as part 1, got undecodable bytes "
                                          f"({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_header", f"expected a JSON object as part 1, got a JSON {type(header).__name__}")
    seq = header.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    v = header.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:  # JSON true equals 1 in Python: not a version number
        raise ProtocolError("bad_version", f"expected protocol version v={PROTOCOL_VERSION}, got v={v!r}", seq)
    return header


def decode_frame(parts: Sequence[Any], max_bytes: int, min_side: int = 1,
                 fixed_shape: tuple[int, int] | None = None) -> Message:
    """Check a ``[header, pixels]`` message and view its pixels without copying.

    ``parts`` are bytes or ``zmq.Frame`` objects. Raises :class:`ProtocolError` naming what
    was expected and what came.
    """
    received = time.time_ns()
    if len(parts) != 2:
        raise ProtocolError("bad_parts", f"expected 2 message parts (JSON header, pixels), got {len(parts)}")
    head = parts[0].buffer if hasattr(parts[0], "buffer") else parts[0]
    body = parts[1].buffer if hasattr(parts[1], "buffer") else parts[1]
    header = decode_header(head)
    seq = header.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    if "seq" in header and seq is None:
        raise ProtocolError("bad_header", f"expected an integer 'seq', got {header['seq']!r}")
    shape = header.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise ProtocolError("bad_shape", f"expected 'shape' as a list of integers [height, width], got {shape!r}", seq)
    if len(shape) != 2:
        raise ProtocolError("bad_shape", f"expected a 2-D frame, shape [height, width]; got {len(shape)}-D "
                                         f"shape {shape}", seq)
    if min(shape) < min_side:
        raise ProtocolError("bad_shape", f"expected height and width >= {min_side}, got shape {shape}", seq)
    if fixed_shape is not None and tuple(shape) != tuple(fixed_shape):
        raise ProtocolError("bad_shape", f"expected shape {list(fixed_shape)} (the only size this model takes), got "
                            f"{shape}", seq)
    dtype = header.get("dtype")
    if dtype not in DTYPES:
        raise ProtocolError("bad_dtype", f"expected 'dtype' one of {', '.join(DTYPES)}, got {dtype!r}", seq)
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    if nbytes > max_bytes or len(body) > max_bytes:
        raise ProtocolError("oversized", f"expected a frame of at most {max_bytes} bytes, got shape {shape} "
                                         f"{dtype} = {nbytes} bytes (buffer {len(body)} bytes)", seq)
    if len(body) != nbytes:
        raise ProtocolError("bad_length", f"expected {nbytes} bytes for shape {shape} {dtype}, "
                                          f"got a buffer of {len(body)} bytes", seq)
    ts = header.get("ts_ns")
    if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool)):
        raise ProtocolError("bad_header", f"expected an integer 'ts_ns' (ns since the epoch), got {ts!r}", seq)
    meta = header.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ProtocolError("bad_header", f"expected 'meta' as a JSON object, got {type(meta).__name__}", seq)
    pixels = decode_pixels(body, shape, dtype)
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        bad = int(np.count_nonzero(~np.isfinite(pixels)))
        raise ProtocolError("not_finite", f"expected finite pixel values, got {bad} NaN/infinite pixels", seq)
    return Message(header=header, pixels=pixels, received_ns=received)
