"""``python -m bench.swap`` on the tiny model: a real ``n2n serve`` process, swaps while a camera-paced stream
flows; its report must be self-consistent (every swap made and seen in the output, no frame lost or reordered,
the stall derived from the gaps it reports). How long the gaps and the service are is the benchmark's to say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_swap_benchmark_reports_consistent_numbers(trained_run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "swap.json"
    proc = subprocess.run([sys.executable, "-m", "bench.swap", "--model", str(trained_run["run"]), "--size", "64",
                           "--swaps", "2", "--fps", "50", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())

    assert (r["in_order_none_lost"], r["lost"], r["out_of_order"], r["server_drops"]) == (True, 0, 0, 0)
    assert r["swaps"] == 2 and len(r["swap_prepare_s"]) == 2 and len(r["gap_ms_at_switch"]) == 2  # a→b→a, both seen
    assert all(0 < p <= s for p, s in zip(r["swap_prepare_s"], r["swap_reply_s"]))  # the reply follows the work
    assert r["camera_fps"] == 50 and r["frame_interval_ms"] == 20
    assert r["frames"] >= 50 * 5  # 2 s before the first swap and 2 s after each, at 50 frames/s
    assert 0 < r["gap_ms_normal"]["p50"] <= r["gap_ms_normal"]["max"]
    assert 0 < r["gap_ms_during_swaps"]["p50"] <= r["gap_ms_during_swaps"]["max"]
    assert r["max_stall_ms"] == round(r["gap_ms_during_swaps"]["max"] - 20, 2)
    assert r["service_ms"] > 0
