"""The whole benchmark in one run, on real processes and sockets, reported side by side.

    python -m bench.suite --model runs/NAME [--size 512] [--engines all] [--precisions fp32,auto]
                          [--frames 100] [--overload-s 10] [--transport tcp|ipc] [--threads N]
                          [--json out.json] [--report DIR]

1. transport floor: the same frame echoed by a ZeroMQ process with no model (``bench.echo``,
   round trip, median and p99), and a memcpy of it (``np.copyto``);
2. each engine alone, at each precision (``auto`` dropped where it resolves to one already
   measured): median, p99, frames/s, achieved GFLOP/s from the model's FLOP count; measured
   ``repeats`` times after a warm-up, medians reported, "noisy" when repeats are > 10% apart;
3. end to end through a real ``n2n serve --mode lossless`` process per engine (its fastest
   precision): latency p50/p95/p99, sustained frames/s, per-stage breakdown (``bench.latency``);
4. live mode under overload: a ``n2n serve --mode live`` process with the fastest engine, fed at
   twice its bare frames/s for ``overload_s`` seconds: latency of every frame received (p99 must
   stay bounded), server drops, and the server's resident memory (must stay flat).

With ``--report DIR``: ``report.json``, ``report.md``, ``latency_cdf.png`` (bare and end to end per
engine, beside the echo), ``overload_timeline.png`` (per-frame latency and server memory under
overload) and the spawned processes' logs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bench.latency import ENDPOINT_NAMES, _start_server, _summary, bare_engine, end_to_end, make_frame
from streamer.client import StreamClient
from streamer.config import ServeConfig
from streamer.engines import ENGINES, available_engines, create_engine
from streamer.model import ModelCard
from streamer.pipeline import TilePlan
from streamer.protocol import encode_frame

__all__ = ["run_suite", "table", "model_flops", "transport_floor", "memcpy", "live_overload", "main"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
NOISY_SPREAD = 0.10  # bare repeats further apart than this: the machine was busy
OVERLOAD_FACTOR = 2.0
RSS_INTERVAL_S = 0.2
TIMELINE_POINTS = 2000  # per-frame overload samples kept in the JSON (the plot uses all)

Progress = Callable[[str], None]


# --- FLOPs ---------------------------------------------------------------------------------------------
_COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _needed(node: Any) -> list[str]:
    """The tensors whose shapes give a node's multiply-accumulates."""
    if node.op_type == "Conv":
        return [node.output[0], node.input[1]]
    if node.op_type == "ConvTranspose":
        return [node.input[0], node.input[1]]
    return [node.input[0], node.output[0]]  # MatMul, Gemm: K from A, the rest from the output


def _macs(node: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    a, b = (shapes[n] for n in _needed(node))
    if node.op_type == "Conv":  # out (N, Cout, *spatial) × weight (Cout, Cin/g, *kernel)[1:]
        return math.prod(a) * math.prod(b[1:])
    if node.op_type == "ConvTranspose":  # in (N, Cin, *spatial) × weight (Cin, Cout/g, *kernel)[1:]
        return math.prod(a) * math.prod(b[1:])
    if node.op_type == "Gemm":
        trans_a = next((int(at.i) for at in node.attribute if at.name == "transA"), 0)
        return math.prod(b) * (a[0] if trans_a else a[-1])
    return math.prod(b) * a[-1]  # MatMul


def _static_shape(value_info: Any) -> tuple[int, ...] | None:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _shapes_by_running(model: Any, names: list[str], feed_name: str, feed_shape: tuple[int, ...],
                       types: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes that shape inference left symbolic (e.g. after a Pad computed from the input's
    shape), read from one ONNX Runtime run on zeros with those tensors made graph outputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in names:
        vi = onnx.ValueInfoProto()
        vi.name = name
        if name in types:
            vi.type.tensor_type.elem_type = types[name]
        probe.graph.output.append(vi)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(names, {feed_name: np.zeros(feed_shape, np.float32)})
    return {n: tuple(int(s) for s in np.shape(v)) for n, v in zip(names, outs)}


def model_flops(onnx_path: str | Path, height: int, width: int) -> float:
    """Floating-point operations of one (1, 1, height, width) inference: 2 × the multiply-accumulates
    of every Conv, ConvTranspose, MatMul and Gemm (biases, activations, pooling not counted).

    Shapes come from ``onnx.shape_inference`` at that static input shape; those it cannot resolve
    (a graph that pads by an amount computed from the input's shape) from one ONNX Runtime run."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    feeds = [i for i in graph.input if i.name not in inits]
    if len(feeds) != 1:
        raise ValueError(f"{onnx_path}: expected one image input, got {len(feeds)}")
    dims = feeds[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"{onnx_path}: expected a 4-d (N, C, H, W) input, got {len(dims)} dimensions")
    channels = int(dims[1].dim_value) if dims[1].HasField("dim_value") else 1
    feed_shape = (1, channels, int(height), int(width))
    for d, v in zip(dims, feed_shape):
        d.ClearField("dim_param")
        d.dim_value = v
    del graph.value_info[:]  # exporters store symbolic shapes; infer them again at this input shape
    for out in graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = dict(inits)
    types: dict[str, Any] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
        s = _static_shape(vi)
        if s is not None:
            shapes.setdefault(vi.name, s)
    for node in graph.node:  # Constant weights
        if node.op_type == "Constant":
            for at in node.attribute:
                if at.name == "value":
                    shapes.setdefault(node.output[0], tuple(int(d) for d in at.t.dims))
    nodes = [n for n in graph.node if n.op_type in _COUNTED]
    missing = sorted({name for n in nodes for name in _needed(n) if name not in shapes})
    if missing:
        shapes.update(_shapes_by_running(model, missing, feeds[0].name, feed_shape, types))
    return float(sum(2 * _macs(n, shapes) for n in nodes))


# --- processes -----------------------------------------------------------------------------------------
def _stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _spawn(cmd: list[str], workdir: Path, name: str, timeout: float = 180.0) -> tuple[subprocess.Popen, dict]:
    """Start ``cmd --ready-file ...`` with its output in ``workdir/name.log``; wait for the ready file."""
    ready = workdir / f"{name}.ready.json"
    log = workdir / f"{name}.log"
    with open(log, "wb") as sink:  # a file, not a pipe: nobody has to keep reading it
        proc = subprocess.Popen([*cmd, "--ready-file", str(ready)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} was not ready within {timeout:g} s:\n{_tail(log)}")
            time.sleep(0.05)
        return proc, json.loads(ready.read_text())
    except BaseException:
        _stop_process(proc)
        raise


def _keep_log(src: Path, logs: Path | None, name: str) -> None:
    if logs is not None and src.exists():
        logs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, logs / name)


def _addresses(transport: str, workdir: Path) -> list[str]:
    args = []
    for name in ENDPOINT_NAMES:
        args += [f"--{name}", f"ipc://{workdir}/{name}" if transport == "ipc" else "tcp://127.0.0.1:*"]
    return args


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process from /proc (None where there is no /proc or it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


# --- measurements --------------------------------------------------------------------------------------
def transport_floor(frame: np.ndarray, frames: int, transport: str, workdir: Path,
                    warmup: int = 10) -> tuple[dict[str, Any], list[float]]:
    """Round trip of ``frame`` (the server's wire format) through a ZeroMQ echo process, no model."""
    workdir.mkdir(parents=True, exist_ok=True)
    address = f"ipc://{workdir}/echo" if transport == "ipc" else "tcp://127.0.0.1:*"
    proc, ready = _spawn([sys.executable, "-m", "bench.echo", "--address", address, "--idle-s", "60"],
                         workdir, "echo", timeout=60)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    times: list[float] = []
    try:
        sock.connect(ready["address"])

        def round_trip(seq: int) -> None:
            sock.send_multipart(encode_frame(frame, seq, time.time_ns()), copy=False)
            if not sock.poll(30_000):
                raise TimeoutError(f"no echo within 30 s from {ready['address']}")
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
        _stop_process(proc)
    return {"kind": "zeromq echo (REQ/REP round trip, no model)", "transport": transport,
            "address": ready["address"], "bytes": int(frame.nbytes), "ms": _summary(times)}, times


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
    s = _summary(times)
    return {"ms_p50": s["p50"], "ms_p99": s["p99"], "bytes": int(frame.nbytes),
            "gb_s": frame.nbytes / (s["p50"] * 1e-3) / 1e9 if s["p50"] > 0 else None}


def _bare(model: Path, cfg: ServeConfig, frame: np.ndarray, frames: int,
          repeats: int, warmup: int = 10) -> tuple[dict[str, Any], list[float]]:
    """``bench.latency.bare_engine`` ``repeats`` times (each warms up first); medians over the repeats."""
    runs = [bare_engine(model, cfg, frame, frames, warmup) for _ in range(repeats)]
    p50s = [r["ms"]["p50"] for r in runs]
    ms: dict[str, float] = {k: float(np.median([r["ms"][k] for r in runs])) for k in ("p50", "p95", "p99", "mean")}
    ms["n"] = sum(r["ms"]["n"] for r in runs)
    spread = (max(p50s) - min(p50s)) / min(p50s) if min(p50s) > 0 else 0.0
    first = runs[0]
    return {"engine": first["engine"], "precision": first["precision"], "device": first["device"],
            "precision_note": first["precision_note"], "ms": ms, "fps": float(np.median([r["fps"] for r in runs])),
            "repeats": repeats, "repeats_ms_p50": p50s, "repeats_fps": [r["fps"] for r in runs],
            "spread": spread, "noisy": spread > NOISY_SPREAD}, [v for r in runs for v in r.pop("samples_ms")]


def _auto_is_fp32(model: Path, engine: str, threads: int | None) -> bool:
    """Whether ``auto`` cannot pick anything but fp32 for this engine here (no reduced precision)."""
    eng = create_engine(engine, ModelCard.load(model), precision="auto", num_threads=threads)
    try:
        return eng._reduced_precision() is None
    finally:
        eng.close()


def _lossless(model: Path, entry: dict[str, Any], threads: int | None, transport: str, workdir: Path,
              frame: np.ndarray, frames: int, logs: Path | None,
              warmup: int = 10) -> tuple[dict[str, Any], list[float]]:
    """``bench.latency.end_to_end`` through a ``n2n serve --mode lossless`` process (stopped in any case)."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc, endpoints = _start_server(model, entry["engine"], entry["precision"], threads, transport, workdir)
    try:
        e2e = end_to_end(endpoints, frame, frames, warmup)
        return e2e, e2e.pop("samples_ms")
    finally:
        _stop_process(proc)
        _keep_log(workdir / "serve.log", logs, f"serve-lossless-{entry['engine']}-{entry['precision']}.log")


def _thirds(t: np.ndarray, v: np.ndarray, span: float) -> tuple[np.ndarray, np.ndarray]:
    """The values in the first and in the last third of ``[0, span]`` (by time)."""
    return v[t < span / 3], v[t >= 2 * span / 3]


def live_overload(model: Path, engine: str, precision: str, frame: np.ndarray, rate_fps: float,
                  duration_s: float, workdir: Path, threads: int | None = None, transport: str = "tcp",
                  warmup: int = 10, logs: Path | None = None) -> dict[str, Any]:
    """A ``n2n serve --mode live`` process fed at ``rate_fps`` for ``duration_s``: every received
    frame's latency and arrival time, the server's drops, its resident memory a few times a second."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "n2n", "serve", "--model", str(model), "--mode", "live", "--engine", engine,
           "--precision", precision, *(["--threads", str(threads)] if threads else []),
           *_addresses(transport, workdir)]
    proc, ready = _spawn(cmd, workdir, "serve-live")
    try:
        result = _overload(proc.pid, ready["endpoints"], frame, rate_fps, duration_s, warmup)
    finally:
        _stop_process(proc)
        _keep_log(workdir / "serve-live.log", logs, f"serve-live-{engine}-{precision}.log")
    result.update(engine=engine, precision=precision, server_pid=proc.pid)
    return result


def _overload(pid: int, endpoints: dict[str, str], frame: np.ndarray, rate_fps: float, duration_s: float,
              warmup: int) -> dict[str, Any]:
    arrivals: list[tuple[float, float, int]] = []  # (s since start, latency ms, seq)
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
                            if now - quiet_since > 2.0:
                                return
                        continue
                    arrivals.append((time.perf_counter() - t0, (time.time_ns() - r.header["ts_ns"]) * 1e-6,
                                     int(r.seq or 0)))
                    quiet_since = None
                    if produced.is_set() and last_seq and r.seq == last_seq[0]:
                        return  # live mode: the last frame sent is always processed
            except BaseException as exc:  # reported below
                errors.append(exc)

        def sample() -> None:
            while True:
                v = _rss_mb(pid)
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
        "ms": _summary(lat.tolist()),
        "ms_p50_first_third": lat_first, "ms_p50_last_third": lat_last,
        "rss_mb": [[round(a, 3), round(b, 2)] for a, b in rss],
        "rss_growth_mb": growth,
        "rss_growth_pct": 100 * growth / float(m_first.mean()) if growth is not None else None,
        "timeline": [[round(a[0], 4), round(a[1], 3)] for a in arrivals[::step]],
        "_timeline_full": arrivals,
    }


# --- the suite -----------------------------------------------------------------------------------------
def _engines(engines: Sequence[str] | str | None) -> list[str]:
    if engines is None or engines == "all" or list(engines) == ["all"]:
        return available_engines()
    names = [engines] if isinstance(engines, str) else list(engines)
    bad = [n for n in names if n not in ENGINES]
    if bad:
        raise ValueError(f"expected engines among all, {', '.join(ENGINES)}; got {', '.join(map(repr, bad))}")
    return list(dict.fromkeys(names))


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities as null, numpy scalars as Python numbers, no private keys."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run_suite(model: Path, size: int = 512, engines: Sequence[str] | None = None,
              precisions: Sequence[str] = ("fp32", "auto"), frames: int = 100, overload_s: float = 10.0,
              report_dir: Path | None = None, transport: str = "tcp", threads: int | None = None,
              progress: Progress | None = None, repeats: int = 3, warmup: int = 10) -> dict[str, Any]:
    """Run every measurement (see the module docstring); returns the report, and writes it with its
    table and plots to ``report_dir`` when given."""
    say: Progress = progress or (lambda _s: None)
    model = Path(model)
    started = time.perf_counter()
    if size < 16 or frames < 2 or overload_s <= 0 or repeats < 1:
        raise ValueError(f"expected size >= 16, frames >= 2, overload_s > 0, repeats >= 1; got {size}, {frames}, "
                         f"{overload_s}, {repeats}")
    if transport not in ("tcp", "ipc"):
        raise ValueError(f"expected transport tcp or ipc, got {transport!r}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"expected precisions among {', '.join(PRECISIONS)}; got {list(precisions)}")
    names = _engines(engines)
    card = ModelCard.load(model)
    frame = make_frame(size, card.input_dtype or "uint16")
    load_start = list(os.getloadavg())
    logs = Path(report_dir) / "logs" if report_dir is not None else None

    plan = TilePlan.make((size, size), card.tile_size, card.tile_overlap, card.size_multiple)
    n_tiles, _, th, tw = plan.batch_shape
    flops: float | None
    flops_note = f"{n_tiles} x model_flops(model.onnx, {th}, {tw})"
    try:
        flops = n_tiles * model_flops(card.artifact("onnx"), th, tw)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        flops, flops_note = None, f"no FLOP count: {type(exc).__name__}: {exc}"

    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="n2n-suite-") as tmp_name:
        tmp = Path(tmp_name)
        say(f"transport floor: zeromq echo over {transport}, {frames} round trips of {size}x{size} {frame.dtype}")
        floor, samples["echo"] = transport_floor(frame, frames, transport, tmp / "echo", warmup)
        _keep_log(tmp / "echo" / "echo.log", logs, "echo.log")
        copy = memcpy(frame)
        say(f"  echo median {floor['ms']['p50']:.3f} ms, p99 {floor['ms']['p99']:.3f} ms; "
            f"memcpy {copy['ms_p50']:.4f} ms")

        entries: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        for name in names:
            seen: set[str] = set()
            for prec in dict.fromkeys(precisions):
                try:
                    if prec == "auto" and "fp32" in seen and _auto_is_fp32(model, name, threads):
                        skipped.append({"engine": name, "precision": prec, "reason": "auto resolves to fp32 here"})
                        continue
                    say(f"bare {name} ({prec}): {repeats} x {frames} frames")
                    cfg = ServeConfig(engine=name, precision=prec, num_threads=threads)  # type: ignore[arg-type]
                    bare, bare_samples = _bare(model, cfg, frame, frames, repeats, warmup)
                except (RuntimeError, OSError, ImportError, ValueError) as exc:  # EngineUnavailable: RuntimeError
                    skipped.append({"engine": name, "precision": prec, "reason": f"{type(exc).__name__}: {exc}"})
                    say(f"  {name} ({prec}) skipped: {exc}")
                    break  # the engine does not run here: its other precisions would not either
                if bare["precision"] in seen:
                    skipped.append({"engine": name, "precision": prec,
                                    "reason": f"resolved to {bare['precision']}, already measured"})
                    continue
                seen.add(bare["precision"])
                entry = {**bare, "requested_precision": prec, "bare_ms_p50": bare["ms"]["p50"],
                         "bare_ms_p99": bare["ms"]["p99"], "bare_ms_mean": bare["ms"]["mean"], "bare_fps": bare["fps"],
                         "gflops": flops / (bare["ms"]["p50"] * 1e-3) / 1e9 if flops and bare["ms"]["p50"] > 0
                         else None, "e2e": None}
                entries.append(entry)
                samples[f"bare:{name}:{bare['precision']}"] = bare_samples
                say(f"  {name} {bare['precision']}: median {bare['ms']['p50']:.3f} ms, {bare['fps']:.1f} fps"
                    + (" (noisy)" if bare["noisy"] else ""))
        if not entries:
            raise RuntimeError("no engine could run this model:\n  "
                               + "\n  ".join(f"{s['engine']} ({s['precision']}): {s['reason']}" for s in skipped))

        best: dict[str, dict[str, Any]] = {}
        for e in entries:
            if e["engine"] not in best or e["bare_fps"] > best[e["engine"]]["bare_fps"]:
                best[e["engine"]] = e
        for e in best.values():
            say(f"end to end: n2n serve --mode lossless --engine {e['engine']} --precision {e['precision']}")
            e2e, e2e_samples = _lossless(model, e, threads, transport, tmp / f"lossless-{e['engine']}", frame,
                                         frames, logs, warmup)
            e["e2e"] = e2e
            e.update(e2e_ms_p50=e2e["ms"]["p50"], e2e_ms_p99=e2e["ms"]["p99"], lossless_fps=e2e["lossless_fps"])
            samples[f"e2e:{e['engine']}:{e['precision']}"] = e2e_samples
            say(f"  median {e2e['ms']['p50']:.3f} ms, p99 {e2e['ms']['p99']:.3f} ms, "
                f"sustained {e2e['lossless_fps']:.1f} fps")

        top = max(best.values(), key=lambda e: e["bare_fps"])
        rate = OVERLOAD_FACTOR * top["bare_fps"]
        say(f"live overload: n2n serve --mode live --engine {top['engine']}, {rate:.0f} frames/s for {overload_s:g} s")
        live = live_overload(model, top["engine"], top["precision"], frame, rate, overload_s, tmp / "live",
                             threads, transport, warmup=warmup, logs=logs)
        live["bounded"] = bool(live["ms_p50_last_third"] <= 2 * live["ms_p50_first_third"] + top["bare_ms_p50"])
        say(f"  p99 {live['ms']['p99']:.2f} ms, drops {100 * live['drop_fraction']:.1f}%, "
            f"memory {live['rss_growth_mb'] if live['rss_growth_mb'] is not None else float('nan'):+.2f} MB")

    e2e_top = top["e2e"]
    noisy = [f"{e['engine']} {e['precision']}: bare repeats {100 * e['spread']:.0f}% apart" for e in entries
             if e["noisy"]]
    report: dict[str, Any] = {
        "model": str(model), "size": size, "dtype": str(frame.dtype), "frames": frames, "transport": transport,
        "threads": threads, "repeats": repeats,
        "engine": top["engine"], "precision": top["precision"], "device": top["device"],
        "selected_by": "fastest bare engine",
        "flops_per_frame": flops, "flops_note": flops_note,
        "bare_ms_p50": top["bare_ms_p50"], "bare_ms_p99": top["bare_ms_p99"], "bare_ms_mean": top["bare_ms_mean"],
        "bare_fps": top["bare_fps"], "bare_gflops": top["gflops"],
        "e2e_ms_p50": e2e_top["ms"]["p50"], "e2e_ms_p95": e2e_top["ms"]["p95"], "e2e_ms_p99": e2e_top["ms"]["p99"],
        "lossless_fps": e2e_top["lossless_fps"], "stages_ms_p50": e2e_top["stages_ms"],
        "e2e_over_bare": e2e_top["ms"]["p50"] / top["bare_ms_p50"],
        "lossless_fps_over_bare": e2e_top["lossless_fps"] / top["bare_fps"],
        "live_overload_p50_ms": live["ms"]["p50"], "live_overload_p99_ms": live["ms"]["p99"],
        "live_drop_fraction": live["drop_fraction"], "live_latency_bounded": live["bounded"],
        "live_rss_growth_mb": live["rss_growth_mb"], "live_rss_growth_pct": live["rss_growth_pct"],
        "transport_floor": floor, "echo_ms_p50": floor["ms"]["p50"], "echo_ms_p99": floor["ms"]["p99"],
        "memcpy": copy, "memcpy_ms_p50": copy["ms_p50"],
        "live": live, "engines": entries, "skipped": skipped,
        "machine": {"cpu_count": os.cpu_count(), "loadavg_start": load_start, "loadavg": list(os.getloadavg()),
                    "platform": platform.platform(), "python": platform.python_version()},
        "noisy": bool(noisy), "noisy_reasons": noisy,
        "elapsed_s": time.perf_counter() - started,
    }
    if report_dir is not None:
        write_report(report, Path(report_dir), samples)
    return _clean(report)


# --- output --------------------------------------------------------------------------------------------
def _num(v: Any, fmt: str = ".2f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def table(report: dict[str, Any]) -> str:
    """The report as markdown: one row per engine and precision, then the floor, overload and machine."""
    r = report
    head = ["| engine | precision | bare p50 / p99 ms | bare frames/s | GFLOP/s | end to end p50 / p99 ms "
            "| lossless frames/s |", "|---|---|---|---|---|---|---|"]
    for e in r["engines"]:
        mark = " **(selected)**" if (e["engine"], e["precision"]) == (r["engine"], r["precision"]) else ""
        e2e = (f"{_num(e.get('e2e_ms_p50'))} / {_num(e.get('e2e_ms_p99'))}" if e.get("e2e") else "—")
        head.append(f"| {e['engine']} ({e['device']}){mark} | {e['precision']}"
                    f"{' (noisy)' if e['noisy'] else ''} | {_num(e['bare_ms_p50'])} / {_num(e['bare_ms_p99'])} "
                    f"| {_num(e['bare_fps'], '.1f')} | {_num(e['gflops'], '.1f')} | {e2e} "
                    f"| {_num(e.get('lossless_fps') if e.get('e2e') else None, '.1f')} |")
    for s in r.get("skipped", []):
        head.append(f"| {s['engine']} | {s['precision']} | skipped: {s['reason'].splitlines()[0]} | | | | |")
    live, floor, m = r["live"], r["transport_floor"], r["machine"]
    gflop = f", {r['flops_per_frame'] / 1e9:.3g} GFLOP per frame" if r.get("flops_per_frame") else ""
    growth = (f"{live['rss_mb'][0][1]:.1f} → {live['rss_mb'][-1][1]:.1f} MB "
              f"(last third vs first: {live['rss_growth_mb']:+.2f} MB, {live['rss_growth_pct']:+.1f}%)"
              if live.get("rss_growth_mb") is not None and live.get("rss_mb") else "n/a")
    rows = [
        ("frame", f"{r['size']}x{r['size']} {r['dtype']} over {r['transport']}{gflop}"),
        ("transport floor: zeromq echo p50 / p99 (no model)", f"{_num(floor['ms']['p50'], '.3f')} / "
                                                              f"{_num(floor['ms']['p99'], '.3f')} ms"),
        ("memcpy p50", f"{_num(r['memcpy']['ms_p50'], '.4f')} ms ({_num(r['memcpy']['gb_s'], '.1f')} GB/s)"),
        ("selected", f"{r['engine']} {r['precision']} ({r['selected_by']})"),
        ("end to end over bare (median)", f"{100 * (r['e2e_over_bare'] - 1):+.1f}%"),
        ("lossless frames/s over bare", f"{100 * (r['lossless_fps_over_bare'] - 1):+.1f}%"),
        ("server stages p50 (pre / infer / post+send)",
         " / ".join(_num(r["stages_ms_p50"].get(k), ".3f") for k in ("preprocess", "infer", "post_send")) + " ms"),
        (f"live overload: {_num(live['rate_asked_fps'], '.0f')} frames/s asked (2x bare), "
         f"{_num(live['producer_fps'], '.0f')} sent",
         f"latency p50 / p99 {_num(live['ms']['p50'])} / {_num(live['ms']['p99'])} ms "
         f"({'bounded' if live['bounded'] else 'GROWING'}: last third p50 {_num(live['ms_p50_last_third'])} ms "
         f"vs first {_num(live['ms_p50_first_third'])} ms); dropped {100 * live['drop_fraction']:.1f}% of "
         f"{live['server_frames_in']} frames in"),
        ("live server memory under overload", growth),
        ("machine", f"{m['cpu_count']} CPUs, load {m['loadavg'][0]:.2f}"
                    + (f" (noisy: {'; '.join(r['noisy_reasons'])})" if r["noisy"] else " (steady)")),
    ]
    return "\n".join([*head, "", "| measure | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]])


def _plots(report: dict[str, Any], out: Path, samples: dict[str, list[float]]) -> dict[str, str]:
    from matplotlib.figure import Figure  # no pyplot: no global backend, the Agg canvas draws PNGs

    files = {"latency_cdf": "latency_cdf.png", "overload_timeline": "overload_timeline.png"}
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    colours = iter(["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9"])
    for e in report["engines"]:
        c = next(colours, "C7")
        key = f"{e['engine']}:{e['precision']}"
        for kind, style in (("bare", "-"), ("e2e", "--")):
            ms = np.sort(np.asarray(samples.get(f"{kind}:{key}", []), dtype=np.float64))
            if ms.size:
                label = f"{e['engine']} {e['precision']} {'bare engine' if kind == 'bare' else 'end to end'}"
                ax.step(ms, np.arange(1, ms.size + 1) / ms.size, where="post", ls=style, color=c, label=label)
    echo = np.sort(np.asarray(samples.get("echo", []), dtype=np.float64))
    if echo.size:
        ax.step(echo, np.arange(1, echo.size + 1) / echo.size, where="post", ls=":", color="k",
                label=f"zeromq echo, no model ({report['transport']})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of frames")
    ax.set_title(f"Latency CDF, {report['size']}x{report['size']} {report['dtype']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out / files["latency_cdf"], dpi=110)

    live = report["live"]
    full = live.get("_timeline_full") or live["timeline"]
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    if full:
        ax1.plot([a[0] for a in full], [a[1] for a in full], ".", ms=2)
    ax1.axhline(live["ms"]["p99"], color="C3", ls="--", lw=1, label=f"p99 {live['ms']['p99']:.2f} ms")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title(f"Live mode at {live['rate_asked_fps']:.0f} frames/s asked (2x bare {report['engine']}): "
                  f"{100 * live['drop_fraction']:.0f}% dropped")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize="small")
    if live["rss_mb"]:
        mb = [a[1] for a in live["rss_mb"]]
        ax2.plot([a[0] for a in live["rss_mb"]], mb, "o-", ms=3, color="C2")
        pad = max(5.0, 0.1 * (max(mb) - min(mb)))  # a few MB of room: flat should look flat
        ax2.set_ylim(min(mb) - pad, max(mb) + pad)
    ax2.set_ylabel("server RSS (MB)")
    ax2.set_xlabel("time since the overload started (s)")
    ax2.grid(True, alpha=0.3)
    fig.savefig(out / files["overload_timeline"], dpi=110)
    return files


def write_report(report: dict[str, Any], out: Path, samples: dict[str, list[float]] | None = None) -> None:
    """``report.json``, ``report.md`` and the PNG plots in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = {**_plots(report, out, samples or {}), "json": "report.json", "markdown": "report.md"}
    clean = _clean(report)
    (out / "report.json").write_text(json.dumps(clean, indent=2) + "\n")
    (out / "report.md").write_text(f"# n2n benchmark: {Path(report['model']).name}\n\n{table(clean)}\n\n"
                                   "![latency CDF](latency_cdf.png)\n\n![overload timeline](overload_timeline.png)\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model folder made by `n2n train`")
    p.add_argument("--size", type=int, default=512, help="square frame side (pixels)")
    p.add_argument("--engines", default="all", help=f"'all' or a comma list of {', '.join(ENGINES)}")
    p.add_argument("--precisions", default="fp32,auto", help="comma list of auto, fp32, bf16, fp16")
    p.add_argument("--frames", type=int, default=100, help="frames per measurement")
    p.add_argument("--overload-s", type=float, default=10.0, help="seconds of live-mode overload")
    p.add_argument("--transport", default="tcp", choices=["tcp", "ipc"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads per engine")
    p.add_argument("--repeats", type=int, default=3, help="bare-engine repeats (medians reported)")
    p.add_argument("--warmup", type=int, default=10, help="frames run before each timing")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--report", type=Path, default=None, help="folder for report.json, report.md and plots")
    a = p.parse_args(argv)
    engines = None if a.engines == "all" else [s.strip() for s in a.engines.split(",") if s.strip()]
    precisions = [s.strip() for s in a.precisions.split(",") if s.strip()]
    try:
        report = run_suite(a.model, a.size, engines, precisions, a.frames, a.overload_s, a.report, a.transport,
                           a.threads, progress=lambda s: print(s, file=sys.stderr, flush=True), repeats=a.repeats,
                           warmup=a.warmup)
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
