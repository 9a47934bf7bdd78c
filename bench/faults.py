"""Faults against real ``n2n serve`` processes on this machine only, bounded in time: fuzzed messages on every
socket, a stalled subscriber in each mode, kill -9 and a restart, overload, and frames growing to the message
limit. Every figure comes from the server's own counters, the client's accounting, or /proc::

    python -m bench.faults --model runs/demo/model --json runs/bench_faults.json
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bench import command
from bench.command import progress_to_stderr, require_model
from bench.overload import live_overload
from bench.processes import Process, peak_mb, rss_mb, serve_command, spawn
from bench.report import machine
from streamer.client import StreamClient
from streamer.core.summary import summary
from streamer.endpoints import Endpoints
from streamer.protocol import encode_frame
from streamer.sources import SimulatedCameraConfig, simulate_stack

__all__ = ["fuzz_messages", "main", "run_faults"]


def _frames(n: int, size: int, seed: int = 11) -> np.ndarray:
    return simulate_stack(SimulatedCameraConfig(height=size, width=size, seed=seed), n)[0]


def fuzz_messages(n: int, seed: int = 0) -> Iterator[list[bytes]]:
    """``n`` malformed or odd messages: random parts, broken JSON, headers with wrong types, shapes and sizes,
    buffers of the wrong length, too many parts; a few valid frames among them."""
    rng = np.random.default_rng(seed)
    good = encode_frame(np.zeros((16, 16), np.uint16), 0)
    heads = [b"{", b"[]", b"null", b'{"v": true}', b'{"v": 1}', b'{"v": 1, "shape": [16], "dtype": "uint16"}',
             b'{"v": 1, "shape": [16, 16], "dtype": "bool"}', b'{"v": 1, "shape": [-1, 16], "dtype": "uint16"}',
             b'{"v": 1, "shape": [99999, 99999], "dtype": "float64"}', b'{"v": 1, "seq": "x", "shape": [16, 16]}',
             b"\xff\xfe", b'{"v": 1, "shape": [16, 16], "dtype": "uint16", "meta": 5}']
    for i in range(n):
        kind = i % 6
        if kind == 0:
            yield [bytes(rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8)) for _ in
                   range(int(rng.integers(1, 5)))]
        elif kind == 1:
            yield [heads[int(rng.integers(0, len(heads)))], bytes(int(rng.integers(0, 1024)))]
        elif kind == 2:
            yield [bytes(good[0]), bytes(int(rng.integers(0, 600)))]  # wrong buffer length
        elif kind == 3:
            yield [bytes(good[0])] + [b"x"] * int(rng.integers(3, 40))  # too many parts
        elif kind == 4:
            yield [bytes(p) for p in good]  # valid: the server must keep doing its job in between
        else:
            yield [json.dumps({"v": 1, "shape": [int(rng.integers(1, 64)), int(rng.integers(1, 64))],
                               "dtype": str(rng.choice(["uint8", "uint16", "float32", "int64"])),
                               "seq": int(rng.integers(0, 2**40))}).encode(), bytes(int(rng.integers(0, 4096)))]


def _fuzz(server: Process, n: int) -> dict[str, Any]:
    """``n`` messages on each socket: input, request, control, and the output's subscriptions."""
    ep = server.endpoints
    ctx = zmq.Context()
    sent = 0
    try:
        push, dealer, xsub = ctx.socket(zmq.PUSH), ctx.socket(zmq.DEALER), ctx.socket(zmq.XSUB)
        for sock, name in ((push, "input"), (dealer, "request"), (xsub, "output")):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(ep[name])
        for parts in fuzz_messages(n, seed=1):
            push.send_multipart(parts)
        for parts in fuzz_messages(n, seed=2):
            dealer.send_multipart([b"", *parts])
            while dealer.poll(0):
                dealer.recv_multipart()  # answers (errors, a frame now and then): read, not kept
        rng = np.random.default_rng(3)
        for _ in range(n):  # subscriptions and anything an XSUB peer may send up
            xsub.send(bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8)))
        req = _control_socket(ctx, ep["control"])
        for i in range(n):  # the control socket, one command at a time (REQ: one reply each)
            req.send_multipart(next(fuzz_messages(1, seed=10_000 + i)))
            try:
                req.recv()
            except zmq.Again:
                req.close(linger=0)
                raise RuntimeError(f"the control socket stopped answering after {i} fuzzed commands") from None
        sent = 4 * n
        time.sleep(0.5)
        for sock in (push, dealer, xsub, req):
            sock.close(linger=0)
    finally:
        ctx.term()
    return {"fuzz_messages": sent}


def _control_socket(ctx: zmq.Context, address: str) -> zmq.Socket:
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(address)
    return req


def _request_latency(client: StreamClient, frame: np.ndarray, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.request(frame)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _stall(model: Path, workdir: Path, mode: str, seconds: float, frame: np.ndarray, threads: int | None,
           precision: str) -> dict[str, Any]:
    """A subscriber that never reads, ``seconds`` long, while a producer pushes at twice the rate the server
    can denoise (as the overload run) and a caller requests."""
    endpoints = Endpoints.local("tcp")
    with spawn(serve_command(model, endpoints, mode, "auto", precision, threads), workdir, f"stall-{mode}") as srv, \
            StreamClient(srv.endpoints, timeout=30) as caller, StreamClient(srv.endpoints, timeout=30) as producer:
        service = summary(_request_latency(caller, frame, 30))["p50"]
        ctx = zmq.Context()
        stalled = ctx.socket(zmq.SUB)
        stalled.setsockopt(zmq.RCVHWM, 1)
        stalled.setsockopt(zmq.LINGER, 0)
        stalled.connect(srv.endpoints["output"])
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        stop = threading.Event()

        interval = service / 2 / 1000  # twice the server's rate

        def produce() -> None:
            next_at = time.perf_counter()
            while not stop.is_set():
                try:
                    producer.send(frame, timeout=1)
                except TimeoutError:
                    pass
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        latencies, stats_seen = [], 0
        with StreamClient(srv.endpoints, timeout=5) as watcher:
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                latencies += _request_latency(caller, frame, 1)
                try:
                    watcher.stats(timeout=0.01)
                    stats_seen += 1
                except TimeoutError:
                    pass
                time.sleep(0.05)
        stop.set()
        thread.join(timeout=10)
        stalled.close(linger=0)
        ctx.term()
        # every frame in is out, dropped, refused or still queued: waited for (a busy server settles later), with
        # a bound (one that never settles is reported, not waited on forever)
        settle_by = time.monotonic() + 60
        while True:
            status = caller.status()
            accounted = status["frames_in"] == status["frames_out"] + status["drops"] + status["errors"] \
                + status["queue_depth"]
            if accounted or time.monotonic() > settle_by:
                break
            time.sleep(0.05)
        alive = srv.popen.poll() is None
    return {"mode": mode, "service_ms_p50": service, "request_ms": summary(latencies), "stats_messages": stats_seen,
            "frames_in": status["frames_in"], "frames_out": status["frames_out"],
            "drops_by_reason": status["drops_by_reason"], "accounted": accounted, "alive": alive}


def _kill_restart(model: Path, workdir: Path, frame: np.ndarray, threads: int | None, precision: str,
                  frozen: int = 10) -> dict[str, Any]:
    """Frames pushed to a frozen server that is then killed; a restart; what the client reports lost."""
    endpoints = Endpoints.local("ipc", workdir)
    cmd = serve_command(model, endpoints, "lossless", "auto", precision, threads)
    with StreamClient(endpoints, timeout=30) as client:
        first = spawn(cmd, workdir, "kill-first")
        try:
            client.wait_subscribed()
            for _ in range(20):
                client.send(frame)
            for _ in range(20):
                client.receive()
            os.kill(first.pid, signal.SIGSTOP)
            for _ in range(frozen):
                client.send(frame)
            os.kill(first.pid, signal.SIGKILL)
        finally:
            first.stop()
        with spawn(cmd, workdir, "kill-second"):
            client.wait_subscribed()
            seq = client.send(frame)
            while client.receive().seq != seq:
                pass
        accounting = client.accounting()
    return {"lost_reported": accounting["lost"], "lost_actual": frozen, "client": accounting}


def _growing(model: Path, workdir: Path, threads: int | None, precision: str, max_mb: int) -> dict[str, Any]:
    """Frames of growing area up to the message limit through the request path; the server's peak memory
    against the budget its configuration states."""
    endpoints = Endpoints.local("tcp")
    cfg = workdir / "serve-growing.yaml"
    cfg.write_text(f"version: 1\nmax_message_bytes: {max_mb * 2**20}\nmode: lossless\n")
    cmd = [*serve_command(model, endpoints, "lossless", "auto", precision, threads), "--config", str(cfg)]
    sides = [s for s in (256, 512, 1024, 2048, 3072, 4096, 5792, 8192) if s * s * 2 <= max_mb * 2**20]
    with spawn(cmd, workdir, "growing") as srv, StreamClient(srv.endpoints, timeout=600) as client:
        client.request(_frames(1, 256)[0])
        baseline = rss_mb(srv.pid) or 0.0
        peaks = []
        for side in sides:
            frame = np.random.default_rng(side).poisson(300, (side, side)).astype(np.uint16)
            client.request(frame)
            peaks.append((side, round(peak_mb(srv.pid) or 0.0, 1)))
        status = client.status()
        alive = srv.popen.poll() is None
    max_pixels = sides[-1] ** 2
    # the budget the configuration states: what was resident once compiled, the input it lets queue (two
    # messages at the limit: the one being read and the one being denoised), the frame's own float32 copies and
    # tiles (about 24 bytes a pixel), and the engine's activations for max_batch tiles of tile_size (one such
    # tile measured on the way: the 2048² frame)
    from streamer.core.card import ModelCard
    from streamer.server import ServeConfig

    tile, max_batch = ModelCard.load(model).tile_size, ServeConfig().max_batch
    one_tile = max(0.0, next((p for s, p in peaks if s >= tile), peaks[-1][1]) - baseline)
    budget = baseline + 2 * max_mb + 24 * max_pixels / 2**20 + max_batch * one_tile
    return {"peak_rss_mb": max(p for _, p in peaks), "rss_budget_mb": round(budget, 1), "baseline_mb": baseline,
            "peaks_by_side": peaks, "alive": alive, "errors": status["errors_by_kind"]}


def run_faults(model: Path, fuzz: int = 10_000, stall_s: float = 10.0, overload_s: float = 60.0,
               max_mb: int = 64, threads: int | None = 1, precision: str = "fp32",
               progress: Any = print) -> dict[str, Any]:
    frame = _frames(1, 128)[0]
    with tempfile.TemporaryDirectory(prefix="n2n-bench-faults-") as tmp:
        work = Path(tmp)
        progress(f"fuzz: {fuzz} messages on each of 4 sockets")
        with spawn(serve_command(model, Endpoints.local("tcp"), "lossless", "auto", precision, threads), work,
                   "fuzz") as srv, StreamClient(srv.endpoints, timeout=60) as client:
            before = client.request(frame).pixels
            fuzzed = _fuzz(srv, fuzz)
            alive = srv.popen.poll() is None
            after = client.request(frame).pixels if alive else None
            fuzz_status: dict[str, Any] = dict(client.status()) if alive else {}
        stalls = []
        for mode in ("lossless", "live"):
            progress(f"a stalled subscriber for {stall_s:g} s, {mode} mode")
            stalls.append(_stall(model, work, mode, stall_s, frame, threads, precision))
        progress("kill -9 and a restart")
        killed = _kill_restart(model, work, frame, threads, precision)
        progress(f"{overload_s:g} s of live overload at 2x")
        bare = summary(_bare_ms(model, frame, threads, precision))["p50"]
        over = live_overload(model, "auto", precision, frame, 2 * 1000 / bare, overload_s, work, threads=threads)
        progress(f"frames growing to the {max_mb} MiB message limit")
        grow = _growing(model, work, threads, precision, max_mb)
    stall_p99 = max(s["request_ms"]["p99"] for s in stalls)
    return {
        "fuzz_messages": fuzzed["fuzz_messages"], "crashes": 0 if alive else 1,
        "correct_after": bool(after is not None and np.array_equal(before, after)),
        "fuzz_errors_by_kind": fuzz_status.get("errors_by_kind", {}),
        "stall_request_p99_ms": stall_p99, "stall_service_ms": max(s["service_ms_p50"] for s in stalls),
        "stalls": stalls,
        "lost_reported": killed["lost_reported"], "lost_actual": killed["lost_actual"],
        "overload_p99_ms": over["ms"]["p99"], "overload_service_ms": bare, "rss_growth_pct": over["rss_growth_pct"],
        "peak_rss_mb": grow["peak_rss_mb"], "rss_budget_mb": grow["rss_budget_mb"], "growing": grow,
        "machine": machine(),
    }


def _bare_ms(model: Path, frame: np.ndarray, threads: int | None, precision: str) -> list[float]:
    from streamer.server import ServeConfig, load_denoiser

    den = load_denoiser(model, ServeConfig(num_threads=threads, precision=precision))
    den(frame)
    out = []
    for _ in range(50):
        t0 = time.perf_counter()
        den(frame)
        out.append((time.perf_counter() - t0) * 1e3)
    den.engine.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = command.parser("bench.faults", __doc__, show_defaults=True)
    parser.add_argument("--model", type=Path, default=Path("runs/demo/model"), help="model folder")
    parser.add_argument("--fuzz", type=int, default=10_000, help="fuzzed messages per socket")
    parser.add_argument("--stall-s", type=float, default=10.0, help="seconds of a stalled subscriber per mode")
    parser.add_argument("--overload-s", type=float, default=60.0, help="seconds of live overload at 2x")
    parser.add_argument("--max-mb", type=int, default=64, help="the message limit for the growing frames (MiB)")
    parser.add_argument("--threads", type=int, default=1, help="engine threads of the servers")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    require_model(parser, args.model)
    report = run_faults(args.model, args.fuzz, args.stall_s, args.overload_s, args.max_mb, args.threads,
                        args.precision, progress=progress_to_stderr)
    keys = ("fuzz_messages", "crashes", "correct_after", "stall_request_p99_ms", "stall_service_ms",
            "lost_reported", "lost_actual", "overload_p99_ms", "overload_service_ms", "rss_growth_pct",
            "peak_rss_mb", "rss_budget_mb")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
