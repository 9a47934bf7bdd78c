"""Faults against real ``n2n serve`` processes on this machine only, bounded in time: fuzzed messages on every
socket, a stalled subscriber in each mode, kill -9 and a restart (the loss the client reports against the loss
measured from the seqs that came back), overload, and frames growing to the message limit (section ``core``);
hostile model packages (``packages``: bench.faults_packages), the memory budgets with what the audit sent
(``budgets``: bench.faults_budgets), damaged recordings, full disks, the hook and the client (``files``:
bench.faults_files). Every figure comes from the server's own counters, the client's accounting, or /proc::

    python -m bench.faults --model runs/demo/model --json runs/bench_faults.json
    python -m bench.faults --model runs/demo/model --sections packages,budgets,files
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
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
    """Frames pushed to a frozen server that is then killed; a restart; what the client reports lost against what
    was lost: the frames sent (their seq) that never came back from either server, counted from the seqs the
    output carried (not assumed: frames still in a socket's queue may reach the restarted server)."""
    endpoints = Endpoints.local("ipc", workdir)
    cmd = serve_command(model, endpoints, "lossless", "auto", precision, threads)
    sent: list[int] = []
    came_back: set[int] = set()

    def read_until(seq: int) -> None:
        while True:
            got = client.receive().seq
            if got is not None:
                came_back.add(got)
            if got == seq:
                return

    with StreamClient(endpoints, timeout=30) as client:
        first = spawn(cmd, workdir, "kill-first")
        try:
            client.wait_subscribed()
            for _ in range(20):
                sent.append(client.send(frame))
            read_until(sent[-1])
            os.kill(first.pid, signal.SIGSTOP)
            for _ in range(frozen):
                sent.append(client.send(frame))
            os.kill(first.pid, signal.SIGKILL)
        finally:
            first.stop()
        with spawn(cmd, workdir, "kill-second"):
            client.wait_subscribed()
            sent.append(client.send(frame))
            read_until(sent[-1])
            while True:  # anything still on its way (a frame that outran the marker): read, with a bound
                try:
                    got = client.receive(timeout=0.5).seq
                except TimeoutError:
                    break
                if got is not None:
                    came_back.add(got)
        accounting = client.accounting()
    lost = [s for s in sent if s not in came_back]
    return {"lost_reported": accounting["lost"], "lost_actual": len(lost), "frozen": frozen, "sent": len(sent),
            "came_back": len(came_back & set(sent)), "client": accounting}


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


SECTIONS = ("core", "packages", "budgets", "files")


def run_faults(model: Path, fuzz: int = 10_000, stall_s: float = 10.0, overload_s: float = 60.0,
               max_mb: int = 64, threads: int | None = 1, precision: str = "fp32",
               progress: Any = print, sections: tuple[str, ...] = SECTIONS,
               budget_scale: float = 1.0) -> dict[str, Any]:
    """The sections asked for; ``budget_scale`` scales the budgets section's inputs (1: the audit's own: 400
    frames of 2048², 60 parts of 30 MiB, a 4096×2048 frame)."""
    report: dict[str, Any] = {"sections": list(sections), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="n2n-bench-faults-") as tmp:
        work = Path(tmp)
        if "core" in sections:
            report.update(_core(model, work, fuzz, stall_s, overload_s, max_mb, threads, precision, progress))
        if "packages" in sections:
            from bench.faults_packages import run_package_faults

            progress("hostile model packages, each through a real n2n denoise")
            report["packages"] = run_package_faults(_exportable(model, work, progress), work / "packages")
        if "budgets" in sections:
            from bench.faults_budgets import run_budget_faults

            progress("memory budgets: the audit's inputs to real servers")
            k = budget_scale
            side = max(64, int(2048 * k) // 64 * 64)
            report["budgets"] = run_budget_faults(model, work / "budgets", threads, frames=max(8, int(400 * k)),
                                                  side=side, parts=max(4, int(60 * k)), part_mb=30 * k,
                                                  limit_mb=16 * k, big=(max(128, int(4096 * k) // 64 * 64),
                                                                        max(64, int(2048 * k) // 64 * 64)))
        if "files" in sections:
            from bench.faults_files import run_file_faults

            progress("damaged recordings, full disk, the hook with its server down, the client with a wrong key")
            report["files"] = run_file_faults(model, work / "files")
    return report


def _exportable(model: Path, work: Path, progress: Any) -> Path:
    """``model`` if it can be written as a zoo package (the packages are rebuilt from a real one), else a small
    model trained here for it (a model normalised with the camera's noise model has no zoo form)."""
    from streamer.core.card import ModelCard

    if ModelCard.load(model).normalization.kind != "anscombe":
        return model
    progress(f"{model} normalises with the camera's noise model (no zoo package form): training a small mean/std "
             "model for the package section")
    out, frames = work / "package-model", work / "package-frames.ome.tif"
    n2n = [sys.executable, "-m", "n2n"]
    for args in (["simulate", "--out", str(frames), "--frames", "8", "--size", "128"],
                 ["train", "--config", "configs/train_fast.yaml", "--data", str(frames), "--epochs", "1",
                  "--steps-per-epoch", "2", "--set", "data.normalization=meanstd", "--set",
                  "data.exposure_augment=null", "--set", "quantize.int8=false", "--out", str(out)]):
        done = subprocess.run([*n2n, *args], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0:
            raise RuntimeError(f"could not make the package section's model (n2n {args[0]}): "
                               f"{done.stderr[-2000:]}")
    return out


def _core(model: Path, work: Path, fuzz: int, stall_s: float, overload_s: float, max_mb: int, threads: int | None,
          precision: str, progress: Any) -> dict[str, Any]:
    frame = _frames(1, 128)[0]
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
        "lost_reported": killed["lost_reported"], "lost_actual": killed["lost_actual"], "killed": killed,
        "overload_p99_ms": over["ms"]["p99"], "overload_service_ms": bare, "rss_growth_pct": over["rss_growth_pct"],
        "peak_rss_mb": grow["peak_rss_mb"], "rss_budget_mb": grow["rss_budget_mb"], "growing": grow,
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
    den.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = command.parser("bench.faults", __doc__, show_defaults=True)
    parser.add_argument("--model", type=Path, default=Path("runs/demo/model"), help="model folder")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"which to run, comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--fuzz", type=int, default=10_000, help="fuzzed messages per socket")
    parser.add_argument("--stall-s", type=float, default=10.0, help="seconds of a stalled subscriber per mode")
    parser.add_argument("--overload-s", type=float, default=60.0, help="seconds of live overload at 2x")
    parser.add_argument("--max-mb", type=int, default=64, help="the message limit for the growing frames (MiB)")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="the budgets section's inputs scaled (1: the audit's: 400 frames of 2048², 60 × 30 MiB "
                             "parts at a 16 MiB limit, a 4096×2048 frame)")
    parser.add_argument("--threads", type=int, default=1, help="engine threads of the servers")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    require_model(parser, args.model)
    sections = tuple(x.strip() for x in args.sections.split(",") if x.strip())
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--sections: expected some of {', '.join(SECTIONS)}, got {args.sections!r}")
    report = run_faults(args.model, args.fuzz, args.stall_s, args.overload_s, args.max_mb, args.threads,
                        args.precision, progress=progress_to_stderr, sections=sections,
                        budget_scale=args.budget_scale)
    print(json.dumps(headline(report), indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures a reader checks first, of the sections that ran."""
    keys = ("fuzz_messages", "crashes", "correct_after", "stall_request_p99_ms", "stall_service_ms",
            "lost_reported", "lost_actual", "overload_p99_ms", "overload_service_ms", "rss_growth_pct",
            "peak_rss_mb", "rss_budget_mb")
    out: dict[str, Any] = {k: report[k] for k in keys if k in report}
    if "packages" in report:
        out["packages_all_refused"] = report["packages"]["all_refused"]
        out["packages"] = {name: {k: c[k] for k in ("refused", "seconds", "peak_rss_mb", "cache_bytes")}
                           for name, c in report["packages"]["cases"].items()}
    if "budgets" in report:
        out["budgets"] = report["budgets"]
    if "files" in report:
        out["files"] = report["files"]
    return out


if __name__ == "__main__":
    sys.exit(main())
