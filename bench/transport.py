"""The transport floor: a frame's round trip through a ZeroMQ echo with no model, and a memcpy of it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bench.processes import start_echo
from streamer.core.summary import summary
from streamer.protocol import encode_frame

__all__ = ["memcpy", "transport_floor"]

ECHO_TIMEOUT_MS = 30_000


def transport_floor(frame: np.ndarray, frames: int, transport: str, workdir: Path, warmup: int = 10,
                    log_dir: Path | None = None) -> tuple[dict[str, Any], list[float]]:
    """Round trip of ``frame`` (the server's wire format) through a ``bench.echo`` process, no model:
    the summary, and every round trip (ms)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    times: list[float] = []
    try:
        with start_echo(workdir, transport, log_dir=log_dir) as echo:
            sock.connect(echo.address)

            def round_trip(seq: int) -> None:
                sock.send_multipart(encode_frame(frame, seq, time.time_ns()), copy=False)
                if not sock.poll(ECHO_TIMEOUT_MS):
                    raise TimeoutError(f"no echo within {ECHO_TIMEOUT_MS / 1000:g} s from {echo.address}")
                sock.recv_multipart(copy=False)

            for i in range(warmup):
                round_trip(i)
            for i in range(frames):
                t0 = time.perf_counter()
                round_trip(warmup + i)
                times.append((time.perf_counter() - t0) * 1e3)
            sock.send(b"")  # the echo's polite stop
            if sock.poll(2000):
                sock.recv()
    finally:
        sock.close(linger=0)
        ctx.term()
    return {"kind": "zeromq echo (REQ/REP round trip, no model)", "transport": transport,
            "address": echo.address, "bytes": int(frame.nbytes), "ms": summary(times)}, times


def memcpy(frame: np.ndarray, reps: int = 200) -> dict[str, Any]:
    """``np.copyto`` of the frame into a preallocated array."""
    dst = np.empty_like(frame)
    for _ in range(5):
        np.copyto(dst, frame)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, frame)
        times.append((time.perf_counter() - t0) * 1e3)
    s = summary(times)
    return {"ms_p50": s["p50"], "ms_p99": s["p99"], "bytes": int(frame.nbytes),
            "gb_s": frame.nbytes / (s["p50"] * 1e-3) / 1e9 if s["p50"] > 0 else None}
