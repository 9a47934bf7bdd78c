"""The latency benchmark runs against a real `n2n serve` process and reports sane, consistent numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import latency


def test_benchmark_reports_consistent_numbers(trained_run: dict[str, Path]) -> None:
    """Bare and end-to-end figures are positive, ordered, and the ratios match the figures."""
    report = latency.run(trained_run["run"], size=64, frames=12, threads=1, progress=lambda _: None)

    assert report["engine"] in ("openvino", "onnxruntime", "torch")
    assert 0 < report["bare_ms_p50"] <= report["bare_ms_p99"]
    assert 0 < report["e2e_ms_p50"] <= report["e2e_ms_p99"]
    assert report["bare_fps"] > 0 and report["lossless_fps"] > 0
    assert report["e2e_over_bare"] == pytest.approx(report["e2e_ms_p50"] / report["bare_ms_p50"])
    assert report["lossless_fps_over_bare"] == pytest.approx(report["lossless_fps"] / report["bare_fps"])
    assert report["e2e_within_10pct"] == (report["e2e_over_bare"] <= 1.10)
    # end to end includes the engine: its server-side infer stage is a real measurement
    assert report["stages_ms_p50"]["infer"] > 0
    # the server processed every frame: warm-up + latency loop + throughput loop, nothing dropped
    assert report["server"]["drops"] == 0 and report["server"]["errors"] == 0
    assert report["server"]["frames_out"] == 10 + 2 * 12
    assert "| bare engine median / p99 |" in latency.table(report)


def test_benchmark_command_writes_json(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """`python -m bench.latency` prints the table and writes the JSON report (ipc transport)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.latency", "--model", str(trained_run["run"]), "--size", "64",
         "--frames", "5", "--threads", "1", "--transport", "ipc", "--json", str(out)],
        capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stderr
    assert "lossless sustained frames/s" in proc.stdout
    report = json.loads(out.read_text())
    assert report["transport"] == "ipc" and report["frames"] == 5


def test_benchmark_refuses_missing_model(tmp_path: Path) -> None:
    """A folder without a model card fails with one error line, not a traceback."""
    proc = subprocess.run([sys.executable, "-m", "bench.latency", "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)

    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "no such model folder" in proc.stderr
    assert "Traceback" not in proc.stderr
