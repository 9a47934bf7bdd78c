"""``n2n bridge``: Micro-Manager live frames → the denoising server → OME-TIFF and viewers.

One thread takes frames from Micro-Manager and pushes them to the server's input; the calling
thread receives the denoised frames from the server's output (where any other viewer may
subscribe too) and writes raw and denoised side by side (channels ``raw``, ``denoised``) into
one OME-TIFF. Counts: frames seen (taken from Micro-Manager), denoised (came back), dropped (by
the server in live mode, or overwritten in Micro-Manager's buffer before they were read).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..client import StreamClient
from ..sources import EndOfStream, OmeTiffWriter
from ..sources.micromanager import MicroManagerSource

__all__ = ["BridgeReport", "run_bridge"]

log = logging.getLogger("n2n.micromanager")


@dataclass
class BridgeReport:
    frames_seen: int = 0
    frames_denoised: int = 0
    frames_dropped: int = 0
    missed_in_micromanager: int = 0
    seconds: float = 0.0
    fps_in: float = 0.0
    fps_out: float = 0.0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    out: str | None = None
    mode: str = ""
    engine: str = ""
    interrupted: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    """Per denoised frame, in arrival order: read from Micro-Manager → denoised frame back."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "latencies_ms"}


class _Producer(threading.Thread):
    """Micro-Manager → server input, until ``frames`` were sent or stopped."""

    def __init__(self, source: MicroManagerSource, endpoints: dict[str, str], frames: int | None,
                 pending: dict[int, np.ndarray] | None, timeout_s: float) -> None:
        super().__init__(name="n2n-bridge-producer", daemon=True)
        self.source, self.endpoints, self.frames = source, endpoints, frames
        self.pending = pending
        self.timeout_s = timeout_s
        self.sent = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.release = threading.Event()  # the socket stays open (frames may still be queued in it) until set
        self.done = threading.Event()  # no more frames will be sent
        self.started_at = 0.0
        self.finished_at = 0.0

    def run(self) -> None:
        try:
            with StreamClient(self.endpoints, timeout=self.timeout_s) as client:
                self.started_at = time.perf_counter()
                while not self.stop.is_set() and (self.frames is None or self.sent < self.frames):
                    try:
                        frame = self.source.read()
                    except EndOfStream:
                        break
                    if self.pending is not None:
                        self.pending[self.sent] = frame.pixels
                    keys = ("ImageNumber", "ElapsedTime-ms", "Exposure-ms", "SimulatorFrame")
                    meta: dict[str, Any] = {k: frame.metadata[k] for k in keys if k in frame.metadata}
                    while True:  # lossless backpressure: wait for room, but notice a stop
                        try:
                            client.send(frame.pixels, seq=self.sent, ts_ns=frame.timestamp_ns, meta=meta,
                                        timeout=0.5)
                            break
                        except TimeoutError:
                            if self.stop.is_set():
                                return
                    self.sent += 1
                self.finished_at = time.perf_counter()
                self.done.set()
                # frames may still sit in this socket's queue (a lossless server takes them as it
                # goes): closing now (linger 0) would discard them
                self.release.wait()
        except BaseException as exc:  # reported by the caller
            self.error = exc
        finally:
            self.finished_at = self.finished_at or time.perf_counter()
            self.done.set()


def run_bridge(source: MicroManagerSource, endpoints: dict[str, str], frames: int | None = None,
               out: str | Path | None = None, timeout_s: float = 10.0, stop: threading.Event | None = None,
               progress: Callable[[BridgeReport], None] | None = None) -> BridgeReport:
    """Bridge ``frames`` frames (None: until ``stop`` is set) from ``source`` through the server at
    ``endpoints``; write raw + denoised to ``out``. Returns the counts."""
    stop = stop or threading.Event()
    report = BridgeReport(out=str(out) if out else None)
    pending: dict[int, np.ndarray] | None = {} if out else None
    writer = OmeTiffWriter(out, source.shape, source.dtype, channels=("raw", "denoised"),
                           name="n2n bridge") if out else None
    latencies: list[float] = []
    t0 = time.perf_counter()
    with StreamClient(endpoints, timeout=timeout_s) as client:
        client.wait_subscribed()
        status = client.status()
        report.mode, report.engine = status["mode"], status["engine"]
        base_drops = status["drops"]
        producer = _Producer(source, endpoints, frames, pending, timeout_s)
        producer.start()
        last_progress = 0.0
        last_received = 0.0
        idle_since: float | None = None
        try:
            while True:
                if stop.is_set():
                    producer.stop.set()
                    report.interrupted = True
                done_sending = producer.done.is_set()
                try:
                    result = client.receive(timeout=0.1)
                except TimeoutError:
                    if done_sending:
                        # all sent: finished once the server has accounted for every frame
                        st = client.status()
                        if report.frames_denoised + st["drops"] - base_drops >= producer.sent:
                            break
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > timeout_s:
                            log.warning("the server still holds frames after %g s; stopping", timeout_s)
                            break
                    continue
                idle_since = None
                last_received = time.perf_counter()
                seq = result.seq if result.seq is not None else -1
                report.frames_denoised += 1
                stages = result.header.get("stages", {})
                ts = result.header.get("ts_ns")
                if isinstance(ts, int) and "sent" in stages:
                    latencies.append((time.time_ns() - ts) / 1e6)
                if writer is not None and pending is not None:
                    for old in [s for s in pending if s < seq]:  # dropped by a live server
                        del pending[old]
                    raw = pending.pop(seq, None)
                    if raw is not None:
                        writer.write([raw, result.pixels.astype(source.dtype, copy=False)],
                                     {**result.header.get("meta", {}), "seq": seq})
                now = time.perf_counter()
                if progress is not None and now - last_progress > 0.25:
                    last_progress = now
                    report.frames_seen = producer.sent
                    progress(report)
        finally:
            producer.stop.set()
            producer.release.set()
            producer.join(timeout=timeout_s + 5)
            if writer is not None:
                writer.close()
            try:
                st = client.status(timeout=2)
                report.frames_dropped = st["drops"] - base_drops
                report.fps_in = st["fps_in"]
            except TimeoutError:
                pass
    if producer.error is not None and not isinstance(producer.error, EndOfStream):
        raise producer.error
    report.frames_seen = producer.sent
    report.missed_in_micromanager = source.missed
    report.seconds = round(time.perf_counter() - t0, 3)
    span = (producer.finished_at - producer.started_at) if producer.finished_at else 0.0
    report.fps_in = round(producer.sent / span, 2) if span > 0 else 0.0
    if report.frames_denoised > 1 and last_received > producer.started_at:
        report.fps_out = round(report.frames_denoised / (last_received - producer.started_at), 2)
    if latencies:
        report.latencies_ms = [round(v, 3) for v in latencies]
        report.latency_ms_p50 = round(float(np.percentile(latencies, 50)), 2)
        report.latency_ms_p95 = round(float(np.percentile(latencies, 95)), 2)
        report.latency_ms_p99 = round(float(np.percentile(latencies, 99)), 2)
    return report
