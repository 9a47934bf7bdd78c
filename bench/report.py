"""Reports: the suite's markdown table, plots and report folder, and what every report shares
(JSON-safe values, numbers that read n/a when missing, the machine they were measured on)."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cpu_name", "fmt", "json_safe", "machine", "table", "write_report"]


def json_safe(obj: Any) -> Any:
    """JSON-safe: NaN and infinities as null, numpy scalars as Python numbers, no private (``_``) keys."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def fmt(v: Any, spec: str = ".2f") -> str:
    """``v`` formatted, or ``n/a`` when it is missing or not finite."""
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(**extra: Any) -> dict[str, Any]:
    """Where a report was measured: CPUs, load average now, platform, Python (and ``extra``)."""
    return {"cpu_count": os.cpu_count(), "cpu": cpu_name(), **extra, "loadavg": list(os.getloadavg()),
            "platform": platform.platform(), "python": platform.python_version()}


# --- the suite's report ---------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    """The report as markdown: one row per engine and precision, then the floor, overload and machine."""
    r = report
    head = ["| engine | precision | bare p50 / p99 ms | bare frames/s | GFLOP/s | end to end p50 / p99 ms "
            "| lossless frames/s |", "|---|---|---|---|---|---|---|"]
    for e in r["engines"]:
        mark = " **(selected)**" if (e["engine"], e["precision"]) == (r["engine"], r["precision"]) else ""
        e2e = (f"{fmt(e.get('e2e_ms_p50'))} / {fmt(e.get('e2e_ms_p99'))}" if e.get("e2e") else "—")
        head.append(f"| {e['engine']} ({e['device']}){mark} | {e['precision']}"
                    f"{' (noisy)' if e['noisy'] else ''} | {fmt(e['bare_ms_p50'])} / {fmt(e['bare_ms_p99'])} "
                    f"| {fmt(e['bare_fps'], '.1f')} | {fmt(e['gflops'], '.1f')} | {e2e} "
                    f"| {fmt(e.get('lossless_fps') if e.get('e2e') else None, '.1f')} |")
    for s in r.get("skipped", []):
        head.append(f"| {s['engine']} | {s['precision']} | skipped: {s['reason'].splitlines()[0]} | | | | |")
    live, floor, m = r["live"], r["transport_floor"], r["machine"]
    gflop = f", {r['flops_per_frame'] / 1e9:.3g} GFLOP per frame" if r.get("flops_per_frame") else ""
    growth = (f"{live['rss_mb'][0][1]:.1f} → {live['rss_mb'][-1][1]:.1f} MB "
              f"(last third vs first: {live['rss_growth_mb']:+.2f} MB, {live['rss_growth_pct']:+.1f}%)"
              if live.get("rss_growth_mb") is not None and live.get("rss_mb") else "n/a")
    rows = [
        ("frame", f"{r['size']}x{r['size']} {r['dtype']} over {r['transport']}{gflop}"),
        ("transport floor: zeromq echo p50 / p99 (no model)", f"{fmt(floor['ms']['p50'], '.3f')} / "
                                                              f"{fmt(floor['ms']['p99'], '.3f')} ms"),
        ("memcpy p50", f"{fmt(r['memcpy']['ms_p50'], '.4f')} ms ({fmt(r['memcpy']['gb_s'], '.1f')} GB/s)"),
        ("selected", f"{r['engine']} {r['precision']} ({r['selected_by']})"),
        ("end to end over bare (median)", f"{100 * (r['e2e_over_bare'] - 1):+.1f}%"),
        ("lossless frames/s over bare", f"{100 * (r['lossless_fps_over_bare'] - 1):+.1f}%"),
        ("server stages p50 (pre / infer / post+send)",
         " / ".join(fmt(r["stages_ms_p50"].get(k), ".3f") for k in ("preprocess", "infer", "post_send")) + " ms"),
        (f"live overload: {fmt(live['rate_asked_fps'], '.0f')} frames/s asked (2x bare), "
         f"{fmt(live['producer_fps'], '.0f')} sent",
         f"latency p50 / p99 {fmt(live['ms']['p50'])} / {fmt(live['ms']['p99'])} ms "
         f"({'bounded' if live['bounded'] else 'GROWING'}: last third p50 {fmt(live['ms_p50_last_third'])} ms "
         f"vs first {fmt(live['ms_p50_first_third'])} ms); dropped {100 * live['drop_fraction']:.1f}% of "
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
    clean = json_safe(report)
    (out / "report.json").write_text(json.dumps(clean, indent=2) + "\n")
    (out / "report.md").write_text(f"# n2n benchmark: {Path(report['model']).name}\n\n{table(clean)}\n\n"
                                   "![latency CDF](latency_cdf.png)\n\n![overload timeline](overload_timeline.png)\n")
