"""``python -m bench.faults`` runs against real ``n2n serve`` processes and reports self-consistent numbers (the
aims are the benchmark's business, not the test's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.faults import main


@pytest.mark.slow
def test_fault_benchmark_reports_every_key(trained_run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "faults.json"

    code = main(["--model", str(trained_run["run"]), "--sections", "core", "--fuzz", "60", "--stall-s", "1",
                 "--overload-s", "2",
                 "--max-mb", "4", "--json", str(out)])

    report = json.loads(out.read_text())
    assert code == 0
    assert report["fuzz_messages"] == 240 and report["crashes"] == 0 and report["correct_after"] is True
    killed = report["killed"]  # measured from the seqs that came back, not assumed
    assert report["lost_reported"] == report["lost_actual"] <= killed["frozen"]
    assert killed["came_back"] + killed["lost_actual"] == killed["sent"]
    assert all(s["alive"] and s["accounted"] for s in report["stalls"])
    assert report["stall_request_p99_ms"] > 0 and report["overload_p99_ms"] > 0
    assert 0 < report["peak_rss_mb"] and report["rss_budget_mb"] > 0 and report["rss_growth_pct"] is not None


def test_fault_benchmark_refuses_an_unknown_section(trained_run: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A section name it does not know is a usage error naming the ones it knows, before any server starts."""
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(trained_run["run"]), "--sections", "core,packeges"])
    assert exc.value.code == 2 and "core, packages, budgets, files" in capsys.readouterr().err
