"""The memory budgets and counts of issue 31 against real ``n2n serve`` processes: the audit's inputs sent again,
every figure from the server's own counters or /proc (VmRSS sampled while it works, VmHWM)::

    from bench.faults_budgets import run_budget_faults
    run_budget_faults(Path("runs/demo/model"), Path("/tmp/budgets"))

(6) live input: ``frames`` frames of ``side``² uint16 pushed as fast as possible at a busy live server → the RSS
growth against the configured budget; (7) one message of ``parts`` parts of ``part_mb`` MiB at a ``limit_mb``
message limit → refused? and the RSS growth; (8) one ``big`` frame → peak and after, warm seconds; (12) a viewer
subscribing twice then leaving, frames to nobody, a slow live subscriber.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bench.processes import Process, peak_mb, rss_mb, serve_command, spawn
from streamer.client import StreamClient
from streamer.endpoints import Endpoints

__all__ = ["run_budget_faults"]


class _Sampler:
    """The largest VmRSS of ``pid`` seen while it runs (sampled every few ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.max_mb, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_mb = max(self.max_mb, rss_mb(self.pid) or 0.0)
            time.sleep(0.005)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.max_mb = max(self.max_mb, rss_mb(self.pid) or 0.0)


def _server(model: Path, workdir: Path, name: str, yaml: str, mode: str, threads: int | None) -> Process:
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(f"version: 1\n{yaml}")
    cmd = [*serve_command(model, Endpoints.local("tcp"), mode, "auto", "fp32", threads), "--config", str(cfg)]
    return spawn(cmd, workdir, name)


def _wait(pred: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _settled(client: StreamClient, total: int, timeout: float = 600.0) -> dict[str, Any]:
    """The status once every one of ``total`` frames pushed is accounted for (out, dropped or refused)."""
    status: dict[str, Any] = {}

    def done() -> bool:
        nonlocal status
        status = dict(client.status())
        return status["frames_out"] + status["drops"] + status["errors"] >= total and not status["queue_depth"]

    _wait(done, timeout)
    return status


def _live_input(model: Path, workdir: Path, threads: int | None, frames: int, side: int,
                budget_mb: int | None) -> dict[str, Any]:
    yaml = "" if budget_mb is None else f"input_buffer_bytes: {budget_mb * 2**20}\n"
    frame = np.random.default_rng(0).poisson(400, (side, side)).astype(np.uint16)
    with _server(model, workdir, "budget-live", yaml, "live", threads) as server, \
            StreamClient(server.endpoints, timeout=300, send_hwm=frames + 10) as client:
        client.wait_subscribed()
        client.send(frame, seq=0)  # the shape compiled and warm: what follows measures the input alone
        _settled(client, 1)
        base = rss_mb(server.pid) or 0.0
        with _Sampler(server.pid) as sampler:
            for i in range(1, frames + 1):
                client.send(frame, seq=i)
            status = _settled(client, frames + 1)
        budget = status.get("input_budget_bytes", 0) / 2**20
    return {"frames": frames, "side": side, "frame_mb": round(frame.nbytes / 2**20, 2),
            "rss_growth_mb": round(sampler.max_mb - base, 1), "budget_mb": round(budget, 1),
            "input_peak_mb": round(status.get("input_peak_bytes", 0) / 2**20, 1),
            "frames_out": status["frames_out"], "drops_input": status["drops_by_reason"].get("input", 0),
            "accounted": status["frames_out"] + status["drops"] + status["errors"] == frames + 1}


def _many_parts(model: Path, workdir: Path, threads: int | None, parts: int, part_mb: float,
                limit_mb: float) -> dict[str, Any]:
    limit = int(limit_mb * 2**20)
    with _server(model, workdir, "budget-parts", f"max_message_bytes: {limit}\n", "live", threads) as server, \
            StreamClient(server.endpoints) as client:
        base = rss_mb(server.pid) or 0.0
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        part = np.zeros(int(part_mb * 2**20), np.uint8)
        try:
            push.connect(server.endpoints["input"])
            with _Sampler(server.pid) as sampler:
                push.send_multipart([part.data] * parts, copy=False)
                _wait(lambda: client.status()["errors"] >= 1, 10.0)  # refused with an error, or never seen
                time.sleep(0.5)
            status = client.status()
            after = rss_mb(server.pid) or 0.0
            # the server serves on
            served = client.request(np.zeros((64, 64), np.uint16), timeout=60).pixels.shape == (64, 64)
        finally:
            push.close(linger=0)
            ctx.term()
    errors = status["errors_by_kind"]
    refused = "oversized" if errors.get("oversized") else "bad_parts" if errors.get("bad_parts") else (
        "disconnected by ZeroMQ (a part over MAXMSGSIZE)")
    return {"parts": parts, "part_mb": part_mb, "limit_mb": limit_mb, "message_mb": round(parts * part_mb, 1),
            "refused": refused, "rss_growth_mb": round(sampler.max_mb - base, 1),
            "rss_after_growth_mb": round(after - base, 1), "served_after": served}


def _big_frame(model: Path, workdir: Path, threads: int | None, shape: tuple[int, int],
               yaml: str = "") -> dict[str, Any]:
    frame = np.random.default_rng(1).poisson(400, shape).astype(np.uint16)
    with _server(model, workdir, "budget-big", yaml, "live", threads) as server, \
            StreamClient(server.endpoints, timeout=600) as client:
        base = rss_mb(server.pid) or 0.0
        client.request(frame)  # compiles its tile shape
        t0 = time.perf_counter()
        client.request(frame)
        warm = time.perf_counter() - t0
        time.sleep(0.2)
        after, peak = rss_mb(server.pid) or 0.0, peak_mb(server.pid) or 0.0
    return {"shape": list(shape), "rss_before_mb": round(base, 1), "peak_mb": round(peak, 1),
            "after_mb": round(after, 1), "warm_s": round(warm, 2)}


def _counts(model: Path, workdir: Path, threads: int | None) -> dict[str, Any]:
    with _server(model, workdir, "budget-counts", "", "live", threads) as server, \
            StreamClient(server.endpoints) as client:
        ctx = zmq.Context()
        try:
            viewer = ctx.socket(zmq.SUB)
            viewer.connect(server.endpoints["view"])
            viewer.setsockopt(zmq.SUBSCRIBE, b"view")
            viewer.setsockopt(zmq.SUBSCRIBE, b"view")
            seen = _wait(lambda: client.status()["viewers"] >= 1, 10.0)
            twice = client.status()["viewers"]
            viewer.close(linger=0)
            back = _wait(lambda: client.status()["viewers"] == 0, 10.0)
            client.send(np.zeros((64, 64), np.uint16), seq=0)  # to nobody
            status = _settled(client, 1, 30.0)
            nobody = status["drops_by_reason"].get("no_subscriber", 0) == 1 and status["frames_out"] == 0
        finally:
            ctx.term()
    return {"viewer_seen": seen, "viewers_subscribed_twice": twice, "viewers_back_to_0": back,
            "frame_to_nobody_counted_no_subscriber": nobody,
            "slow_live_subscriber_missed": "not countable: a live XPUB drops per subscriber inside ZeroMQ without "
                                           "telling (XPUB_NODROP would refuse the frame to every subscriber)"}


def run_budget_faults(model: Path, workdir: Path, threads: int | None = None, frames: int = 400, side: int = 2048,
                      budget_mb: int | None = None, parts: int = 60, part_mb: float = 30, limit_mb: float = 16,
                      big: tuple[int, int] = (4096, 2048)) -> dict[str, Any]:
    """The figures of items 6, 7, 8 and 12 (see the module docstring); the defaults are the audit's inputs."""
    workdir.mkdir(parents=True, exist_ok=True)
    return {"live_input": _live_input(model, workdir, threads, frames, side, budget_mb),
            "many_parts": _many_parts(model, workdir, threads, parts, part_mb, limit_mb),
            "big_frame": _big_frame(model, workdir, threads, big),
            "counts": _counts(model, workdir, threads)}
