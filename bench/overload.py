"""Live mode under overload: a ``n2n serve --mode live`` process fed faster than its engine can go.

Latency of every frame received (it must stay bounded: latest frame wins) beside the server's own time on it,
the server's drops, and its resident memory sampled a few times a second (it must stay flat).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.processes import rss_mb, start_server
from streamer.client import StreamClient
from streamer.core.summary import summary

__all__ = ["OVERLOAD_FACTOR", "live_overload"]

OVERLOAD_FACTOR = 2.0  # the suite feeds the live server this many times its bare engine's frames/s
RSS_INTERVAL_S = 0.2
TIMELINE_POINTS = 2000  # per-frame overload samples kept in the JSON (the plot uses all)
QUIET_S = 30.0  # after the last send, how long the receiver waits for the last frame (it returns as it comes)


def _thirds(t: np.ndarray, v: np.ndarray, span: float) -> tuple[np.ndarray, np.ndarray]:
    """The values in the first and in the last third of ``[0, span]`` (by time)."""
    return v[t < span / 3], v[t >= 2 * span / 3]


def live_overload(model: Path, engine: str, precision: str, frame: np.ndarray, rate_fps: float,
                  duration_s: float, workdir: Path, threads: int | None = None, transport: str = "tcp",
                  warmup: int = 10, logs: Path | None = None) -> dict[str, Any]:
    """A ``n2n serve --mode live`` process fed at ``rate_fps`` for ``duration_s``: every received
    frame's latency and arrival time, the server's drops, its resident memory a few times a second."""
    with start_server(model, workdir, mode="live", engine=engine, precision=precision, threads=threads,
                      transport=transport, log_dir=logs) as server:
        result = _overload(server.pid, server.endpoints, frame, rate_fps, duration_s, warmup)
    result.update(engine=engine, precision=precision, server_pid=server.pid)
    return result


def _overload(pid: int, endpoints: dict[str, str], frame: np.ndarray, rate_fps: float, duration_s: float,
              warmup: int) -> dict[str, Any]:
    arrivals: list[tuple[float, float, int]] = []  # (s since start, latency ms, seq)
    in_server: list[float] = []  # ms from received to sent in the server, per frame received
    rss: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    produced = threading.Event()
    stop = threading.Event()
    last_seq: list[int] = []
    with StreamClient(endpoints, timeout=120) as sub, StreamClient(endpoints, timeout=120) as pub:
        sub.wait_subscribed()
        for _ in range(warmup):  # one at a time: compiles, and nothing is dropped
            pub.send(frame, ts_ns=time.time_ns())
            sub.receive()
        before = pub.status()
        t0 = time.perf_counter()

        def receive() -> None:
            quiet_since: float | None = None
            try:
                while not stop.is_set():
                    try:
                        r = sub.receive(timeout=0.1)
                    except TimeoutError:
                        if produced.is_set():
                            now = time.perf_counter()
                            quiet_since = quiet_since or now
                            if now - quiet_since > QUIET_S:
                                return
                        continue
                    captured = r.header["ts_ns"]  # (this benchmark sends every frame with its capture time)
                    assert captured is not None
                    arrivals.append((time.perf_counter() - t0, (time.time_ns() - captured) * 1e-6, int(r.seq or 0)))
                    stages = r.header["stages"]
                    in_server.append((stages["sent"] - stages["received"]) * 1e-6)
                    quiet_since = None
                    if produced.is_set() and last_seq and r.seq == last_seq[0]:
                        return  # live mode: the last frame sent is always processed
            except BaseException as exc:  # reported below
                errors.append(exc)

        def sample() -> None:
            while True:
                v = rss_mb(pid)
                if v is not None:
                    rss.append((time.perf_counter() - t0, v))
                if produced.wait(RSS_INTERVAL_S):
                    return

        receiver = threading.Thread(target=receive, name="bench-receiver")
        sampler = threading.Thread(target=sample, name="bench-rss")
        receiver.start()
        sampler.start()
        sent = 0
        interval = 1.0 / rate_fps
        try:
            while True:
                now = time.perf_counter()
                if now - t0 >= duration_s:
                    break
                ahead = t0 + sent * interval - now
                if ahead > 0:
                    time.sleep(ahead)
                seq = pub.send(frame, ts_ns=time.time_ns())
                sent += 1
            produced_s = time.perf_counter() - t0
            if sent:
                last_seq.append(seq)
            produced.set()
            receiver.join(timeout=60)
        finally:
            produced.set()
            stop.set()
            receiver.join(timeout=10)
            sampler.join(timeout=10)
        if errors:
            raise errors[0]
        after = pub.status()
    frames_in = after["frames_in"] - before["frames_in"]
    drops = after["drops"] - before["drops"]
    t = np.array([a[0] for a in arrivals])
    lat = np.array([a[1] for a in arrivals])
    if lat.size == 0:
        raise RuntimeError(f"no frame came back from the live server in {duration_s:g} s of overload")
    first, last = _thirds(t, lat, produced_s)
    lat_first = float(np.median(first)) if first.size else float("nan")
    lat_last = float(np.median(last)) if last.size else float("nan")
    r_t = np.array([s[0] for s in rss])
    r_mb = np.array([s[1] for s in rss])
    m_first, m_last = _thirds(r_t, r_mb, produced_s)
    growth = float(m_last.mean() - m_first.mean()) if m_first.size and m_last.size else None
    step = max(1, len(arrivals) // TIMELINE_POINTS)
    return {
        "rate_asked_fps": rate_fps, "duration_s": produced_s, "sent": sent, "producer_fps": sent / produced_s,
        "received": int(lat.size), "received_fps": lat.size / produced_s, "received_fraction": lat.size / sent,
        "server_frames_in": frames_in, "server_frames_out": after["frames_out"] - before["frames_out"],
        "server_drops": drops, "server_errors": after["errors"] - before["errors"],
        "drop_fraction": drops / frames_in if frames_in else 0.0,
        "ms": summary(lat.tolist()), "server_ms": summary(in_server),
        "ms_p50_first_third": lat_first, "ms_p50_last_third": lat_last,
        "rss_mb": [[round(a, 3), round(b, 2)] for a, b in rss],
        "rss_growth_mb": growth,
        "rss_growth_pct": 100 * growth / float(m_first.mean()) if growth is not None else None,
        "timeline": [[round(a[0], 4), round(a[1], 3)] for a in arrivals[::step]],
        "_timeline_full": arrivals,
    }
