"""The messages that cross a process boundary, defined once: the frame header, the stats message, and the pair of
frames the server sends its fine-tuning worker; and the one decoder of raw pixels they all carry.

Every reader (the server, the client, the dashboard, the viewer and its napari widget, the benchmarks, the
fine-tuning worker) types what it reads with these, so a key spelled wrong is a type error, not a silent ``None``.
The wire format itself (parts, topics, checks) is :mod:`streamer.protocol`'s.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

import numpy as np
from typing_extensions import NotRequired

__all__ = ["FrameHeader", "RawSpec", "Stages", "StatsMessage", "decode_pair", "decode_pixels", "encode_pair"]


class Stages(TypedDict):
    """When the server received, preprocessed, inferred and sent a frame (ns since the epoch)."""

    received: int
    preprocessed: int
    inferred: int
    sent: int


class RawSpec(TypedDict):
    """The raw frame beside a denoised one (view messages)."""

    shape: list[int]
    dtype: str


class FrameHeader(TypedDict, total=False):
    """Part 1 of a frame message (see :mod:`streamer.protocol`): what a producer sends (``v``, ``shape``,
    ``dtype`` required) and what the server sends back with the denoised frame."""

    v: int
    type: str
    seq: int | None
    shape: list[int]
    dtype: str
    ts_ns: int | None
    """Capture time, ns since the epoch."""
    meta: dict[str, Any]
    engine: str
    model: str
    stages: Stages
    raw: RawSpec
    """View messages: the raw frame's shape and dtype."""
    flags: list[str]
    """Frames the server sends, only when its checks flagged the frame (absent: served as checked):
    ``float_path`` (denoised by the float32 model: the frame left the range the reduced precision was checked on),
    ``raw:…`` (e.g. ``raw:output_range``: the pixels are the RAW frame, not denoised, because the denoised output
    failed a check). Optional: protocol version 1 readers that do not know it ignore it."""


class StatsMessage(TypedDict):
    """What the server publishes on its stats socket and answers to ``status`` (:meth:`Server.status`)."""

    v: int
    type: str
    time_ns: int
    uptime_s: float
    frames_in: int
    frames_out: int
    requests: int
    fps_in: float
    fps_out: float
    latency_ms: dict[str, Any]
    """Capture (or arrival) to sent: p50, p95, p99 (ms, None before the first frame)."""
    server_ms: dict[str, Any]
    """Received to sent, in the server."""
    stages_ms: dict[str, Any]
    """Median ms per stage: queue, preprocess, infer, postprocess, send."""
    drops: int
    drops_by_reason: dict[str, int]
    notices_dropped: int
    view_frames: int
    drop_fraction: float
    errors: int
    errors_by_kind: dict[str, int]
    queue_depth: int
    swaps: int
    batched_frames: int
    history_resets: dict[str, int]
    history_short: int
    motion_fallbacks: int
    served_float_path: int
    """Frames served denoised by the float32 model (flag ``float_path``) since the server started."""
    served_raw: int
    """Frames served RAW, not denoised (any ``raw:…`` flag) since the server started."""
    served_flags: dict[str, int]
    """Frames served with each flag (the header's ``flags``) since the server started."""
    mode: str
    subscribers: int
    viewers: int
    engine: str
    precision: str
    precision_note: str
    device: str
    model: str
    shapes: list[Any]
    endpoints: dict[str, str]
    finetune: NotRequired[dict[str, Any]]
    """With fine-tuning on: the worker's state, pairs, steps, losses, swaps."""
    models: NotRequired[dict[str, Any]]
    """A model set (:mod:`streamer.core.modelset`): each channel's model, engine, precision and K (``"*"``: the
    default); the fields above describe its first model."""
    model_set: NotRequired[str]
    """The set's routing in one line (``DAPI → runs/dapi, GFP → runs/gfp, any other channel → raw (no model)``)."""
    no_model: NotRequired[dict[str, int]]
    """Frames passed through raw because their channel has no model in the set, by channel."""


def decode_pixels(buffer: Any, shape: list[int] | tuple[int, ...], dtype: str) -> np.ndarray:
    """A read-only view of little-endian, C-order pixels (no copy)."""
    return np.frombuffer(buffer, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def encode_pair(*frames: np.ndarray, seq: int) -> list[Any]:
    """Consecutive frames (seq, seq + 1, …) for the fine-tuning worker: ``[header, pixels of each frame]``. Two
    for a single-frame model (a Noise2Noise pair), K + 1 for a K-frame model (a window and the frame after it)."""
    if len(frames) < 2:
        raise ValueError(f"expected at least two consecutive frames, got {len(frames)}")
    a = frames[0]
    for b in frames[1:]:
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"expected frames of one shape and dtype, got {a.shape} {a.dtype} and {b.shape} "
                             f"{b.dtype}")
    head = json.dumps({"shape": list(a.shape), "dtype": a.dtype.name, "seq": seq, "frames": len(frames)}).encode()
    little = a.dtype.newbyteorder("<")
    return [head, *(np.ascontiguousarray(f, little).data for f in frames)]


def decode_pair(parts: list[Any]) -> tuple[tuple[np.ndarray, ...], int | None]:
    """What :func:`encode_pair` made: the consecutive frames (oldest first) and the first one's seq."""
    head, *pixels = parts
    meta = json.loads(head)
    if len(pixels) != int(meta.get("frames", 2)) or len(pixels) < 2:
        raise ValueError(f"expected {meta.get('frames', 2)} frames after the header, got {len(pixels)}")
    return tuple(decode_pixels(p, meta["shape"], meta["dtype"]) for p in pixels), meta.get("seq")
