"""`n2n demo --quick`: the whole product in one real process; its report is checked for sanity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tifffile


def test_demo_quick(tmp_path: Path) -> None:
    """Grab → train → export → serve → bridge with the dashboard → report: the denoised frames beat the raw
    ones against the simulator's truth, lossless mode drops nothing, latency percentiles are ordered, and the
    report folder holds what the summary names."""
    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "100", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "n2n", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    report = json.loads((out / "report.json").read_text())
    q, st, grab = report["quality"], report["stream"], report["grab"]
    # never worse than raw; clearly better once a few epochs fitted in the time budget (a busy machine fits fewer)
    assert q["psnr_denoised_db"] > q["psnr_raw_db"] + (3 if report["train"]["epochs"] >= 4 else 0), q
    assert q["psnr_raw_db"] < q["psnr_gaussian_db"] and q["gaussian_sigma"] > 0, q  # the classic baseline
    assert grab["consecutive"] and grab["missed"] == 0 and grab["frames"] == report["settings"]["grab_frames"]
    n = report["settings"]["bridge_frames"]
    assert st["mode"] == "lossless" and st["frames_seen"] == st["frames_denoised"] == n == q["frames_scored"]
    assert st["frames_dropped"] == 0 and st["server_drops"] == 0 and st["server_errors"] == 0
    assert 0 < st["latency_ms_p50"] <= st["latency_ms_p95"] <= st["latency_ms_p99"]
    assert st["fps_in"] > 0 and st["fps_out"] > 0
    live = report["live"]
    assert live["mode"] == "live" and live["frames_seen"] > 0 and live["frames_denoised"] >= 1
    assert live["frames_seen"] == live["frames_denoised"] + live["frames_dropped"]
    assert not live["interrupted"] and not st["interrupted"]  # planned ends, not Ctrl-C
    assert 0 < live["latency_ms_p50"] <= live["latency_ms_p99"]
    for name in ("report.json", "frames.png", "latency.png", "bridge.ome.tif", "grab.ome.tif", "latencies_ms.json"):
        assert (out / name).is_file(), name
    assert tifffile.imread(out / "bridge.ome.tif").shape[:2] == (n, 2)
    assert len(json.loads((out / "latencies_ms.json").read_text())) == n
    assert (f"raw {q['psnr_raw_db']:.2f} dB → Gaussian σ={q['gaussian_sigma']:g} {q['psnr_gaussian_db']:.2f} dB → "
            f"denoised {q['psnr_denoised_db']:.2f} dB") in " ".join(proc.stdout.split())
    assert "report.json" in report["files"]
    # training by time: the epochs that fitted in the budget, said in the summary (and a score below the Gaussian
    # filter's is said, not left to the reader)
    tr = report["train"]
    assert 1 <= tr["epochs"] <= tr["epochs_planned"] == report["settings"]["epochs"], tr
    assert tr["budget_seconds"] == report["settings"]["train_seconds"] > 0
    assert f"{tr['epochs']} of {tr['epochs_planned']} epochs in" in " ".join(proc.stdout.replace("│", " ").split())
    assert "a step here" in proc.stderr  # the estimate up front
    below = "scored below the Gaussian filter" in " ".join(proc.stderr.split())
    assert below == (q["psnr_denoised_db"] < q["psnr_gaussian_db"]), q
    assert "1/5" in proc.stderr and "5/5" in proc.stderr  # every stage announced
    # where the live figures were measured, and how busy other processes kept the CPU meanwhile
    machine, busy = report["machine"], report["machine"]["live_stage"]
    assert machine["cpu_count"] == os.cpu_count() and machine["cpu"] and len(busy["loadavg_start"]) == 3
    assert 0 <= busy["others_cpu_pct"] <= 100 and busy["busy"] == (busy["others_cpu_pct"] >= 25)
    table = " ".join(proc.stdout.replace("│", " ").split())  # the summary's cells, unwrapped
    assert f"other processes used {busy['others_cpu_pct']:.0f}% of it during the live stage" in table
