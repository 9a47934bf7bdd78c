"""``python -m bench.denoise`` runs real ``n2n denoise`` processes and reports self-consistent numbers (how
fast is the benchmark's business, not the test's)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.denoise import main


def test_denoise_benchmark_reports_rates_memory_and_identical_pixels(trained_run: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "bench.json"

    code = main(["--model", str(trained_run["run"]), "--size", "64", "--planes", "6", "--large", "2",
                 "--precision", "fp32", "--json", str(out)])

    report = json.loads(out.read_text())
    assert code == 0
    assert report["planes"] == [6, 12] and report["precision"] == "fp32"
    assert [(r["planes"], r["workers"]) for r in report["runs"]] == [(6, 1), (6, 2), (12, 1), (12, 2)]
    assert [r["scheduler"] for r in report["runs"]] == ["this process", "LocalCluster"] * 2
    assert report["identical_across_workers"] is True
    for r in report["runs"]:
        assert r["planes_per_s"] > 0 and 0 <= r["startup_s"] < r["seconds"]
        assert r["peak_mib_per_worker"] > 50 and r["peak_mib_command"] > 50  # a Python process with an engine
        speedup = report["speedup"][str(r["planes"])][str(r["workers"])]
        one = next(o for o in report["runs"] if o["planes"] == r["planes"] and o["workers"] == 1)
        assert abs(speedup - r["planes_per_s"] / one["planes_per_s"]) < 0.01
    two = [r for r in report["runs"] if r["workers"] == 2]
    assert all(len(r["peak_mib_workers"]) == 2 for r in two), "each worker process's peak is measured"
