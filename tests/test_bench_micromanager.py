"""bench.micromanager runs end to end on a tiny model and small frames and reports consistent numbers."""

from __future__ import annotations

import json
from pathlib import Path

from bench.micromanager import main, measure


def test_measure_reports_consistent_rates(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """Rates are positive; lossless denoises every frame; live accounts for every frame as denoised or dropped."""
    r = measure(str(trained_run["run"]), 64, frames=12, exposure_ms=2.0, tmp=tmp_path, bridge_frames=10)

    assert r["camera_rendered_fps"] > 0 and r["camera_replayed_fps"] > 0 and r["grab_fps"] > 0
    assert r["camera_replayed_fps"] <= r["camera_period_fps"] * 1.1  # a camera cannot beat its frame period
    assert r["grab_missed"] == 0
    ll, lv = r["bridge_lossless"], r["bridge_live"]
    assert ll["frames"] == ll["denoised"] == 10 and ll["dropped"] == 0 and ll["fps_out"] > 0
    assert lv["frames"] == 10 and lv["denoised"] + lv["dropped"] == 10 and lv["denoised"] >= 1
    assert ll["latency_ms_p99"] >= ll["latency_ms_p50"] > 0
    assert list(tmp_path.iterdir()) == []  # recordings removed


def test_command_writes_json_and_table(trained_run: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The command prints a markdown table row per size and writes the JSON."""
    out = tmp_path / "mm.json"
    assert main(["--model", str(trained_run["run"]), "--sizes", "64", "--frames", "8", "--exposure-ms", "2",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| size |") and "| 64² |" in table
    assert json.loads(out.read_text())["results"][0]["size"] == 64
