"""bench.micromanager runs end to end on a tiny model and small frames and reports consistent numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import micromanager


@pytest.fixture(scope="module")
def measured(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One measurement at 64² (30 grabbed, 10 bridged frames, 2 ms exposure), run once for the module. 30 frames:
    a frame already in Micro-Manager's buffer when the camera's clock starts adds 1/30 to its rate, not 1/12."""
    tmp = tmp_path_factory.mktemp("mm")
    return micromanager.measure(str(trained_run["run"]), 64, frames=30, exposure_ms=2.0, tmp=tmp,
                                bridge_frames=10), tmp


def test_measure_reports_consistent_rates(measured: tuple[dict[str, Any], Path]) -> None:
    """Rates are positive; lossless denoises every frame; live accounts for every frame as denoised or dropped."""
    r, tmp = measured

    assert r["camera_rendered_fps"] > 0 and r["camera_replayed_fps"] > 0 and r["grab_fps"] > 0
    assert r["camera_replayed_fps"] <= r["camera_period_fps"] * 1.1  # a camera cannot beat its frame period
    assert r["grab_missed"] == 0
    ll, lv = r["bridge_lossless"], r["bridge_live"]
    assert ll["frames"] == ll["denoised"] == 10 and ll["dropped"] == 0 and ll["fps_out"] > 0
    assert lv["frames"] == 10 and lv["denoised"] + lv["dropped"] == 10 and lv["denoised"] >= 1
    assert ll["latency_ms_p99"] >= ll["latency_ms_p50"] > 0
    assert list(tmp.iterdir()) == []  # recordings removed


def test_command_writes_json_and_table(measured: tuple[dict[str, Any], Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The command measures each size with its flags, prints a markdown table row per size and writes the JSON
    (the measurement itself is the module's, not run again)."""
    r, _ = measured
    calls: list[tuple[Any, ...]] = []

    def fake_measure(model: str, size: int, frames: int, exposure_ms: float, tmp: Path,
                     bridge_frames: int | None = None) -> dict[str, Any]:
        calls.append((model, size, frames, exposure_ms, bridge_frames))
        return {**r, "size": size}

    monkeypatch.setattr(micromanager, "measure", fake_measure)
    out = tmp_path / "mm.json"
    assert micromanager.main(["--model", "runs/x", "--sizes", "64", "96", "--frames", "8", "--exposure-ms", "2",
                              "--json", str(out)]) == 0

    assert calls == [("runs/x", 64, 8, 2.0, None), ("runs/x", 96, 8, 2.0, None)]
    table = capsys.readouterr().out
    assert table.startswith("| size |") and "| 64² |" in table and "| 96² |" in table
    assert [x["size"] for x in json.loads(out.read_text())["results"]] == [64, 96]
