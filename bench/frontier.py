"""The quality/speed frontier: every model × precision in one run, on real processes and sockets.

    python -m bench.frontier --models runs/A runs/B ... --data X.tif --reference X_gt.tif
                             [--sizes 512 2048] [--precisions fp32,bf16,int8] [--frames 100]
                             [--frames-large 8] [--json out.json] [--report DIR]

For each model and each precision it can run at (OpenVINO: fp32, bf16 where the CPU has it, int8
where the model has an INT8 export that passed its check):

* GFLOP per frame at each size (from the exported graph);
* quality: every frame of ``--data`` through the streamer's Denoiser at that precision (float32
  output), PSNR and SSIM against ``--reference`` (mean over frames, as ``n2n evaluate``);
* bare: the engine alone at each size (median latency, frames/s);
* end to end: a real ``n2n serve --mode lossless`` process at that precision, at each size:
  latency one frame at a time and the sustained lossless frames/s.

Models that differ only in their frames of history (``input_frames`` K) form the K axis: per network, PSNR and
frames/s at each K against its K = 1 model (``k_axis`` in the JSON, a table of its own, dotted lines in the plot).

Beside them, the Gaussian filter with the best sigma (chosen on the first frames, as ``n2n evaluate``)
is the line to beat. Writes JSON, a markdown table and ``frontier.png``: PSNR against end-to-end
frames/s at the first size.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.command import Progress, comma_list, parser, progress_to_stderr, run_command
from bench.flops import model_flops
from bench.latency import bare_engine, lossless_end_to_end, make_frame
from bench.report import fmt, json_safe, machine
from streamer.core.card import ModelCard
from streamer.core.history import MOTION_THRESHOLD, FrameHistory
from streamer.server import ServeConfig, load_denoiser

__all__ = ["gaussian_baseline", "main", "quality", "run_frontier", "table", "write_report"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def _read(path: Path) -> np.ndarray:
    from streamer.sources import read_stack

    return read_stack(path)


def _psnr_ssim(images: np.ndarray, reference: np.ndarray, data_range: float) -> tuple[float, float]:
    from trainer.metrics import psnr, ssim

    refs = [reference[t] if reference.ndim == 3 else reference for t in range(len(images))]
    return (float(np.mean([psnr(im, r, data_range) for im, r in zip(images, refs)])),
            float(np.mean([ssim(im, r, data_range) for im, r in zip(images, refs)])))


def gaussian_baseline(raw: np.ndarray, reference: np.ndarray, data_range: float,
                      sigmas: Sequence[float] = (0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0)) -> dict[str, float]:
    """The Gaussian filter with the best sigma on the first 5 frames, scored on all (``n2n evaluate``'s
    baseline, the same function)."""
    from trainer.evaluate import best_gaussian

    refs = [reference[t] if reference.ndim == 3 else reference for t in range(len(raw))]
    sigma, smoothed, _ = best_gaussian(raw, refs, [data_range] * len(raw), sigmas)
    p, s = _psnr_ssim(smoothed, reference, data_range)
    return {"sigma": sigma, "psnr": p, "ssim": s}


def quality(model: Path, precision: str, raw: np.ndarray, reference: np.ndarray, data_range: float,
            threads: int | None = None) -> dict[str, Any]:
    """Every frame through the served Denoiser at ``precision`` (in the camera's dtype, as served), scored."""
    cfg = ServeConfig(engine="openvino", precision=precision, num_threads=threads)  # type: ignore[arg-type]
    den = load_denoiser(model, cfg)
    # a K-frame model sees the frames before each one by the server's rule, as in n2n evaluate
    history = FrameHistory(den.input_frames, MOTION_THRESHOLD)
    try:
        den.prepare(raw.shape[1:], raw[0])  # type: ignore[arg-type]
        out = np.empty(raw.shape, np.float32)
        for i, frame in enumerate(raw):
            out[i] = den(frame, previous=history.advance(frame, i))
        info = den.engine.info()
    finally:
        den.close()
    p, s = _psnr_ssim(out, reference, data_range)
    return {"psnr": p, "ssim": s, "precision": info["precision"], "precision_note": info["precision_note"]}


def _data_range(reference: np.ndarray) -> float:
    from trainer.metrics import data_range_of

    return data_range_of(reference)


def run_frontier(models: Sequence[Path], data: Path, reference: Path, sizes: Sequence[int] = (512, 2048),
                 precisions: Sequence[str] = ("fp32", "bf16", "int8"), frames: int = 100, frames_large: int = 8,
                 large_from: int = 1024, threads: int | None = None, max_frames: int | None = None,
                 progress: Progress | None = None, report_dir: Path | None = None) -> dict[str, Any]:
    """Measure every model × precision (see the module docstring); returns the report."""
    say: Progress = progress or (lambda _s: None)
    started = time.perf_counter()
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"expected precisions among {', '.join(PRECISIONS)}; got {list(precisions)}")
    if not models:
        raise ValueError("expected at least one model folder (--models runs/A runs/B ...)")
    if not sizes or min(sizes) < 16 or frames < 2 or frames_large < 2:
        raise ValueError(f"expected sizes >= 16 and frames >= 2; got sizes {list(sizes)}, frames {frames}, "
                         f"{frames_large}")
    raw, ref = _read(Path(data)), _read(Path(reference))
    if raw.ndim == 2:
        raw = raw[None]
    if max_frames:
        raw = raw[:max_frames]
        ref = ref[:max_frames] if ref.ndim == 3 else ref
    if ref.shape[-2:] != raw.shape[-2:] or (ref.ndim == 3 and ref.shape[0] != raw.shape[0]):
        raise ValueError(f"{reference}: expected a reference of (H, W) = {raw.shape[-2:]} or (T, H, W) = "
                         f"{raw.shape}, got {ref.shape}")
    rng = _data_range(ref)
    say(f"Gaussian filter baseline on {len(raw)} frames of {data}")
    gauss = gaussian_baseline(raw, ref, rng)
    say(f"  best sigma {gauss['sigma']}: {gauss['psnr']:.2f} dB")
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="n2n-frontier-") as tmp:
        for model in map(Path, models):
            card = ModelCard.load(model)
            arch = card.architecture
            flops = {}
            for size in sizes:
                try:
                    flops[size] = model_flops(card.artifact("onnx"), size, size)
                except (OSError, ValueError, RuntimeError) as exc:
                    say(f"  {model}: no FLOP count at {size}: {exc}")
            for prec in dict.fromkeys(precisions):
                say(f"{model.name} {prec}: quality on {len(raw)} frames")
                try:
                    q = quality(model, prec, raw, ref, rng, threads)
                except (RuntimeError, OSError, ValueError) as exc:
                    skipped.append({"model": str(model), "precision": prec, "reason": f"{type(exc).__name__}: {exc}"})
                    say(f"  skipped: {exc}")
                    continue
                if q["precision"] != prec:
                    skipped.append({"model": str(model), "precision": prec,
                                    "reason": f"runs as {q['precision']} here: {q['precision_note']}"})
                    say(f"  skipped: runs as {q['precision']} ({q['precision_note']})")
                    continue
                row: dict[str, Any] = {
                    "model": model.name, "path": str(model), "precision": prec, "input_frames": arch.input_frames,
                    "architecture": arch.model_dump(exclude={"name", "in_channels", "out_channels"}),
                    "kflop_per_pixel": (arch.flops_per_pixel or 0) / 1e3 or None,
                    "parameters": arch.parameters, "psnr": q["psnr"], "ssim": q["ssim"],
                    "psnr_over_gaussian": q["psnr"] - gauss["psnr"], "precision_note": q["precision_note"],
                    "sizes": {}}
                say(f"  {q['psnr']:.3f} dB")
                for size in sizes:
                    n, warm = (frames, 10) if size < large_from else (frames_large, 2)
                    frame = make_frame(size, card.input_dtype or "uint16")
                    cfg = ServeConfig(engine="openvino", precision=prec, num_threads=threads)  # type: ignore[arg-type]
                    bare = bare_engine(model, cfg, frame, n, warm)
                    say(f"  {size}²: bare {bare['ms']['p50']:.2f} ms ({bare['fps']:.1f} frames/s); end to end ...")
                    workdir = Path(tmp) / f"{model.name}-{prec}-{size}"
                    e2e = lossless_end_to_end(model, "openvino", prec, frame, n, workdir, threads, warmup=warm)
                    gflop = flops.get(size)
                    row["sizes"][str(size)] = {
                        "gflop_per_frame": gflop / 1e9 if gflop else None,
                        "bare_ms_p50": bare["ms"]["p50"], "bare_fps": bare["fps"],
                        "e2e_ms_p50": e2e["ms"]["p50"], "e2e_ms_p99": e2e["ms"]["p99"],
                        "lossless_fps": e2e["lossless_fps"],
                        "e2e_over_bare": e2e["ms"]["p50"] / bare["ms"]["p50"],
                        "stages_ms_p50": e2e["stages_ms"], "server_ms_p50": e2e["server_ms"]["p50"], "frames": n}
                    say(f"    end to end {e2e['ms']['p50']:.2f} ms, lossless {e2e['lossless_fps']:.1f} frames/s")
                rows.append(row)
    if not rows:
        raise RuntimeError("nothing could be measured:\n  " + "\n  ".join(
            f"{s['model']} {s['precision']}: {s['reason']}" for s in skipped))
    report: dict[str, Any] = {
        "data": str(data), "reference": str(reference), "frames_scored": len(raw), "data_range": rng,
        "sizes": list(sizes), "precisions": list(precisions), "engine": "openvino", "threads": threads,
        "gaussian": gauss, "rows": rows, "skipped": skipped,
        "machine": machine(),
        "elapsed_s": time.perf_counter() - started,
    }
    report["k_axis"] = k_axis(report)
    report = json_safe(report)
    if report_dir is not None:
        write_report(report, Path(report_dir))
    return report


def table(report: dict[str, Any]) -> str:
    """One markdown row per model × precision, fastest first within equal quality."""
    sizes = [str(s) for s in report["sizes"]]
    head = ("| model | architecture | K | kFLOP/px | precision | PSNR / SSIM | "
            + " | ".join(f"{s}²: GFLOP, bare / end-to-end lossless frames/s" for s in sizes) + " |")
    lines = [head, "|" + "---|" * (6 + len(sizes))]
    for r in sorted(report["rows"], key=lambda r: (-r["psnr"], r["model"], r["precision"])):
        a = r["architecture"]
        desc = (_network(a, block=True) + (f", frame stem {a['frame_stem']}" if a.get("frame_stem") else "")
                + (f", residual on {a['residual_frames']}" if a.get("residual_frames", "newest") != "newest" else ""))
        cells = []
        for s in sizes:
            m = r["sizes"].get(s, {})
            cells.append(f"{fmt(m.get('gflop_per_frame'), '.3g')}, {fmt(m.get('bare_fps'), '.1f')} / "
                         f"{fmt(m.get('lossless_fps'), '.1f')}")
        lines.append(f"| {r['model']} | {desc} | {r.get('input_frames', 1)} | {fmt(r['kflop_per_pixel'], '.1f')} | "
                     f"{r['precision']} | "
                     f"{r['psnr']:.2f} / {r['ssim']:.4f} | " + " | ".join(cells) + " |")
    g = report["gaussian"]
    lines.append(f"| Gaussian filter (σ {g['sigma']}) | | | | | {g['psnr']:.2f} / {g['ssim']:.4f} |"
                 + " |" * len(sizes))
    for s in report.get("skipped", []):
        lines.append(f"| {Path(s['model']).name} | | | | {s['precision']} | skipped: "
                     f"{s['reason'].splitlines()[0][:160]} |" + " |" * len(sizes))
    lines += k_axis_table(report)
    m = report["machine"]
    lines += ["", f"{report['frames_scored']} frames of {report['data']} scored against {report['reference']}; "
                  f"{m['cpu_count']} × {m['cpu']}, load {m['loadavg'][0]:.2f} at the end."]
    return "\n".join(lines)


def _network(arch: dict[str, Any], block: bool = False) -> str:
    """A network's shape without its frames of history and their front end (what the K axis varies); ``block``:
    name the block even when it is the plain ``conv``."""
    return (f"depth {arch['depth']}, filters {arch['filters'] or arch['base_filters']}"
            + (f", {arch['block']}" if block or arch.get("block", "conv") != "conv" else "")
            + (f", skip {arch['skip']}" if arch.get("skip", "concat") != "concat" else "")
            + (f", stem {arch['stem']}" if arch.get("stem", "none") != "none" else ""))


def k_axis(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What each frame of history buys at what speed: per network shape measured at more than one K, its models by
    K (each at its fastest precision at the first size; of two models of one network and K, the first given), with
    PSNR and frames/s against its K = 1 model."""
    size = str(report["sizes"][0])
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in report["rows"]:
        fps = r["sizes"].get(size, {}).get("lossless_fps")
        key = (_network(r["architecture"]), int(r.get("input_frames", 1)))
        if fps is None or (key in best and best[key]["model"] != r["model"]):
            continue  # another model of this network and K: the first one measured stands for it
        if key not in best or fps > best[key]["fps"]:
            best[key] = {"model": r["model"], "input_frames": key[1], "precision": r["precision"], "psnr": r["psnr"],
                         "fps": fps}
    axis: dict[str, list[dict[str, Any]]] = {}
    for net in dict.fromkeys(n for n, _ in best):
        ks = sorted((v for (n, _), v in best.items() if n == net), key=lambda v: v["input_frames"])
        if len(ks) < 2:
            continue
        one = next((v for v in ks if v["input_frames"] == 1), None)
        for v in ks:
            v["psnr_over_k1"] = v["psnr"] - one["psnr"] if one else None
            v["fps_over_k1"] = v["fps"] / one["fps"] if one and one["fps"] else None
        axis[net] = ks
    return axis


def k_axis_table(report: dict[str, Any]) -> list[str]:
    """The K axis as markdown lines (none where no network was measured at two K)."""
    axis = k_axis(report)
    if not axis:
        return []
    lines = ["", f"Frames of history (K), each network at its fastest precision; frames/s end to end at "
                 f"{report['sizes'][0]}²:", "",
             "| network | K | PSNR (dB) | over K = 1 (dB) | frames/s | of K = 1's frames/s |",
             "|---|---|---|---|---|---|"]
    for net, ks in axis.items():
        for k in ks:
            lines.append(f"| {net} | {k['input_frames']} | {k['psnr']:.2f} | {fmt(k['psnr_over_k1'], '+.2f')} | "
                         f"{fmt(k['fps'], '.1f')} | {fmt(k['fps_over_k1'], '.2f')} |")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    """PSNR against end-to-end lossless frames/s at the first size: a colour per model (its precisions
    joined by a line), a marker per precision, the Gaussian filter as a dashed line."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    size = str(report["sizes"][0])
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.add_subplot()
    markers = {"fp32": "o", "bf16": "s", "fp16": "D", "int8": "^"}
    names = list(dict.fromkeys(r["model"] for r in report["rows"]))
    colours = {n: f"C{i % 10}" for i, n in enumerate(names)}
    model_handles = []
    for name in names:
        pts = sorted((r["sizes"][size]["lossless_fps"], r["psnr"], r["precision"]) for r in report["rows"]
                     if r["model"] == name and r["sizes"].get(size, {}).get("lossless_fps") is not None)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=colours[name], lw=0.8, alpha=0.6)
        for fps, psnr, precision in pts:
            ax.scatter(fps, psnr, marker=markers.get(precision, "x"), color=colours[name], s=45, zorder=3)
        best = max(pts)
        ax.annotate(name, (best[0], best[1]), textcoords="offset points", xytext=(5, 4), fontsize=7,
                    color=colours[name])
        model_handles.append(Line2D([], [], color=colours[name], marker="o", lw=0.8, label=name))
    for ks in k_axis(report).values():  # the K axis: one network's models joined in order of K
        ax.plot([v["fps"] for v in ks], [v["psnr"] for v in ks], ":", color="k", lw=1, alpha=0.7)
        for v in ks:
            ax.annotate(f"K={v['input_frames']}", (v["fps"], v["psnr"]), textcoords="offset points", xytext=(-8, -11),
                        fontsize=7)
    g = report["gaussian"]
    ax.axhline(g["psnr"], color="k", ls="--", lw=1)
    precision_handles = [Line2D([], [], color="gray", marker=m, ls="", label=p) for p, m in markers.items()
                         if any(r["precision"] == p for r in report["rows"])]
    precision_handles.append(Line2D([], [], color="k", ls="--", label=f"Gaussian filter, best σ {g['sigma']} "
                                                                    f"({g['psnr']:.2f} dB)"))
    first = ax.legend(handles=model_handles, fontsize=7, loc="lower left", title="model", title_fontsize=7)
    ax.add_artist(first)
    ax.legend(handles=precision_handles, fontsize=7, loc="lower right", title="precision", title_fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"end-to-end lossless frames/s at {size}² (n2n serve, OpenVINO)")
    ax.set_ylabel(f"PSNR (dB) on {Path(report['data']).name}")
    ax.set_title(f"Quality against speed ({report['machine']['cpu_count']} × {report['machine']['cpu']})")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120)


def write_report(report: dict[str, Any], out: Path) -> None:
    """``frontier.json``, ``frontier.md`` and ``frontier.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot(report, out / "frontier.png")
    (out / "frontier.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "frontier.md").write_text(f"# Quality/speed frontier\n\n{table(report)}\n\n![frontier](frontier.png)\n")


def main(argv: list[str] | None = None) -> int:
    p = parser("bench.frontier", __doc__)
    p.add_argument("--models", type=Path, nargs="+", required=True, help="model folders made by `n2n train`")
    p.add_argument("--data", type=Path, required=True, help="noisy stack to score (TIFF)")
    p.add_argument("--reference", type=Path, required=True, help="its clean reference (TIFF)")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="square frame sides for speed")
    p.add_argument("--precisions", default="fp32,bf16,int8", help="comma list of fp32, bf16, fp16, int8")
    p.add_argument("--frames", type=int, default=100, help="frames per speed measurement")
    p.add_argument("--frames-large", type=int, default=8, help="frames per measurement at sizes >= 1024")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per engine")
    p.add_argument("--max-frames", type=int, default=None, help="score only the first N frames of --data")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--report", type=Path, default=None, help="folder for frontier.json/.md/.png")
    a = p.parse_args(argv)
    return run_command(lambda: run_frontier(a.models, a.data, a.reference, a.sizes, comma_list(a.precisions),
                                            a.frames, a.frames_large, threads=a.threads, max_frames=a.max_frames,
                                            progress=progress_to_stderr, report_dir=a.report), table, a.json)


if __name__ == "__main__":
    sys.exit(main())
