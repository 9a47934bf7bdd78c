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

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.command import Progress, comma_list, parser, progress_to_stderr, run_command, write_json
from bench.config import BenchConfig
from bench.flops import model_flops
from bench.latency import BareEngine, lossless_end_to_end, make_frame
from bench.overload import OVERLOAD_FACTOR, live_overload
from bench.report import json_safe, machine, table, write_report
from bench.transport import memcpy, transport_floor
from streamer.core.card import ModelCard
from streamer.core.config import load_config
from streamer.core.tiling import TilePlan
from streamer.engines import ENGINES, available_engines
from streamer.server import ServeConfig

__all__ = ["live_overload", "main", "memcpy", "model_flops", "run_from_config", "run_suite", "table",
           "transport_floor"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
NOISY_SPREAD = 0.10  # bare repeats further apart than this: the machine was busy


def _engines(engines: Sequence[str] | str | None) -> list[str]:
    if engines is None or engines == "all" or list(engines) == ["all"]:
        return available_engines()
    names = [engines] if isinstance(engines, str) else list(engines)
    bad = [n for n in names if n not in ENGINES]
    if bad:
        raise ValueError(f"expected engines among all, {', '.join(ENGINES)}; got {', '.join(map(repr, bad))}")
    return list(dict.fromkeys(names))


def _flops(card: ModelCard, size: int) -> tuple[float | None, str]:
    """FLOPs of one frame (every tile the server would run) and how they were counted."""
    plan = TilePlan.make((size, size), card.tile_size, card.tile_overlap, card.size_multiple)
    n_tiles, _, th, tw = plan.batch_shape
    try:
        return n_tiles * model_flops(card.artifact("onnx"), th, tw), f"{n_tiles} x model_flops(model.onnx, {th}, {tw})"
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        return None, f"no FLOP count: {type(exc).__name__}: {exc}"


def _bare(model: Path, cfg: ServeConfig, frame: np.ndarray, frames: int, repeats: int, warmup: int,
          measured: set[str]) -> tuple[dict[str, Any], list[float]] | str:
    """The engine alone ``repeats`` times (each loaded and warmed up afresh), medians over the repeats, and
    every sample; or, without timing anything, why not: its precision resolves to one in ``measured``."""
    runs = []
    for i in range(repeats):
        with BareEngine(model, cfg, frame) as engine:
            if i == 0 and engine.precision in measured:
                return f"{cfg.precision} resolves to {engine.precision} here, already measured"
            runs.append(engine.measure(frames, warmup))
    p50s = [r["ms"]["p50"] for r in runs]
    ms: dict[str, float] = {k: float(np.median([r["ms"][k] for r in runs])) for k in ("p50", "p95", "p99", "mean")}
    ms["n"] = sum(r["ms"]["n"] for r in runs)
    spread = (max(p50s) - min(p50s)) / min(p50s) if min(p50s) > 0 else 0.0
    first = runs[0]
    return {"engine": first["engine"], "precision": first["precision"], "device": first["device"],
            "precision_note": first["precision_note"], "ms": ms, "fps": float(np.median([r["fps"] for r in runs])),
            "repeats": repeats, "repeats_ms_p50": p50s, "repeats_fps": [r["fps"] for r in runs],
            "spread": spread, "noisy": spread > NOISY_SPREAD}, [v for r in runs for v in r["samples_ms"]]


def _bare_entries(model: Path, names: list[str], precisions: Sequence[str], frame: np.ndarray, frames: int,
                  repeats: int, warmup: int, threads: int | None, flops: float | None, say: Progress,
                  samples: dict[str, list[float]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each engine at each precision it resolves to (once each): the entries measured and those skipped."""
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for name in names:
        seen: set[str] = set()
        for prec in dict.fromkeys(precisions):
            say(f"bare {name} ({prec}): {repeats} x {frames} frames")
            cfg = ServeConfig(engine=name, precision=prec, num_threads=threads)  # type: ignore[arg-type]
            try:
                result = _bare(model, cfg, frame, frames, repeats, warmup, seen)
            except (RuntimeError, OSError, ImportError, ValueError) as exc:  # EngineUnavailable: RuntimeError
                skipped.append({"engine": name, "precision": prec, "reason": f"{type(exc).__name__}: {exc}"})
                say(f"  {name} ({prec}) skipped: {exc}")
                break  # the engine does not run here: its other precisions would not either
            if isinstance(result, str):
                skipped.append({"engine": name, "precision": prec, "reason": result})
                say(f"  {name} ({prec}) skipped: {result}")
                continue
            bare, bare_samples = result
            samples[f"bare:{name}:{bare['precision']}"] = bare_samples
            seen.add(bare["precision"])
            entries.append({**bare, "requested_precision": prec, "bare_ms_p50": bare["ms"]["p50"],
                            "bare_ms_p99": bare["ms"]["p99"], "bare_ms_mean": bare["ms"]["mean"],
                            "bare_fps": bare["fps"], "e2e": None,
                            "gflops": flops / (bare["ms"]["p50"] * 1e-3) / 1e9 if flops and bare["ms"]["p50"] > 0
                            else None})
            say(f"  {name} {bare['precision']}: median {bare['ms']['p50']:.3f} ms, {bare['fps']:.1f} fps"
                + (" (noisy)" if bare["noisy"] else ""))
    if not entries:
        raise RuntimeError("no engine could run this model:\n  "
                           + "\n  ".join(f"{s['engine']} ({s['precision']}): {s['reason']}" for s in skipped))
    return entries, skipped


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
    load_start = machine()["loadavg"]
    logs = Path(report_dir) / "logs" if report_dir is not None else None
    flops, flops_note = _flops(card, size)

    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="n2n-suite-") as tmp_name:
        tmp = Path(tmp_name)
        say(f"transport floor: zeromq echo over {transport}, {frames} round trips of {size}x{size} {frame.dtype}")
        floor, samples["echo"] = transport_floor(frame, frames, transport, tmp / "echo", warmup, log_dir=logs)
        copy = memcpy(frame)
        say(f"  echo median {floor['ms']['p50']:.3f} ms, p99 {floor['ms']['p99']:.3f} ms; "
            f"memcpy {copy['ms_p50']:.4f} ms")

        entries, skipped = _bare_entries(model, names, precisions, frame, frames, repeats, warmup, threads, flops,
                                         say, samples)
        best: dict[str, dict[str, Any]] = {}
        for e in entries:
            if e["engine"] not in best or e["bare_fps"] > best[e["engine"]]["bare_fps"]:
                best[e["engine"]] = e
        for e in best.values():
            say(f"end to end: n2n serve --mode lossless --engine {e['engine']} --precision {e['precision']}")
            e2e = lossless_end_to_end(model, e["engine"], e["precision"], frame, frames,
                                      tmp / f"lossless-{e['engine']}", threads, transport, warmup, log_dir=logs)
            samples[f"e2e:{e['engine']}:{e['precision']}"] = e2e.pop("samples_ms")
            e["e2e"] = e2e
            e.update(e2e_ms_p50=e2e["ms"]["p50"], e2e_ms_p99=e2e["ms"]["p99"], lossless_fps=e2e["lossless_fps"])
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
        "machine": machine(loadavg_start=load_start),
        "noisy": bool(noisy), "noisy_reasons": noisy,
        "elapsed_s": time.perf_counter() - started,
    }
    if report_dir is not None:
        write_report(report, Path(report_dir), samples)
    return json_safe(report)


def run_from_config(cfg: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """The suite as ``cfg`` (``n2n bench``'s configuration) asks: the report, also written to
    ``cfg.json_path`` and, with its table, plots and logs, to the folder ``cfg.report`` where they are set."""
    if cfg.model is None:
        raise ValueError("expected a model folder to measure (model: runs/NAME), got none")
    report = run_suite(Path(cfg.model), cfg.size, None if cfg.engines == "all" else comma_list(cfg.engines),
                       comma_list(cfg.precisions), cfg.frames, cfg.overload_s,
                       Path(cfg.report) if cfg.report else None, cfg.transport, cfg.threads, progress=progress,
                       repeats=cfg.repeats, warmup=cfg.warmup)
    if cfg.json_path:
        write_json(Path(cfg.json_path), report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("bench.suite", __doc__)
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

    def measure() -> dict[str, Any]:
        cfg = load_config(BenchConfig, None, model=str(a.model), size=a.size, engines=a.engines,
                          precisions=a.precisions, frames=a.frames, overload_s=a.overload_s, transport=a.transport,
                          threads=a.threads, repeats=a.repeats, warmup=a.warmup,
                          json_path=str(a.json) if a.json else None, report=str(a.report) if a.report else None)
        return run_from_config(cfg, progress=progress_to_stderr)

    return run_command(measure, table)


if __name__ == "__main__":
    sys.exit(main())
