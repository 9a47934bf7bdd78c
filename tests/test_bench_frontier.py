"""The frontier benchmark: every model × precision through real `n2n serve` processes, scored on data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from bench import frontier
from streamer.core.card import ModelCard
from trainer.config import EvaluateConfig
from trainer.evaluate import evaluate
from trainer.inference import load_run

FP32 = EvaluateConfig(precision="fp32")
"""The frontier rows compared below run at fp32 (evaluate's default, auto, scores what n2n serve runs here)."""


@pytest.fixture(scope="module")
def frontier_run(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Two models (the session's run and a copy named 'twin') at fp32 and int8 (which they lack), 48²."""
    base = tmp_path_factory.mktemp("frontier")
    twin = base / "twin"
    shutil.copytree(trained_run["run"], twin)
    out = base / "report"
    report = frontier.run_frontier([trained_run["run"], twin], trained_run["raw"], trained_run["truth"], sizes=[48],
                                   precisions=["fp32", "int8"], frames=4, threads=1, report_dir=out)
    return report, out


def test_rows_cover_every_model_and_precision_it_runs_at(frontier_run: tuple[dict[str, Any], Path]) -> None:
    """One row per model at fp32; int8 is skipped with the reason (no INT8 export), not silently."""
    r, _ = frontier_run
    assert sorted((row["model"], row["precision"]) for row in r["rows"]) == [("run", "fp32"), ("twin", "fp32")]
    assert len(r["skipped"]) == 2 and all("int8" in s["reason"] and "no INT8 export" in s["reason"]
                                          for s in r["skipped"])


def test_quality_equals_n2n_evaluate(frontier_run: tuple[dict[str, Any], Path], trained_run: dict[str, Path]) -> None:
    """The served fp32 output scores what the trainer's evaluation scores on the same frames; the
    Gaussian baseline is the same too."""
    r, _ = frontier_run
    raw, ref = tifffile.imread(trained_run["raw"]), tifffile.imread(trained_run["truth"])
    expected, _ = evaluate(load_run(trained_run["run"]), raw, ref, FP32)
    row = next(row for row in r["rows"] if row["model"] == "run")
    assert row["psnr"] == pytest.approx(expected["psnr_denoised"], abs=1e-3)
    assert row["ssim"] == pytest.approx(expected["ssim_denoised"], abs=1e-4)
    assert r["gaussian"]["psnr"] == pytest.approx(expected["psnr_gaussian"], abs=1e-6)
    assert row["psnr_over_gaussian"] == pytest.approx(row["psnr"] - r["gaussian"]["psnr"])


def test_speed_numbers_are_sane_and_consistent(frontier_run: tuple[dict[str, Any], Path],
                                               trained_run: dict[str, Path]) -> None:
    """GFLOP per frame matches the card's FLOPs per pixel; a frame through the server costs at least the server's
    own time on it, the engine's call among it (the bare engine's figure, from another moment, is the report's)."""
    r, _ = frontier_run
    card = ModelCard.load(trained_run["run"])
    for row in r["rows"]:
        m = row["sizes"]["48"]
        assert m["gflop_per_frame"] == pytest.approx(card.architecture.flops_per_pixel * 48 * 48 / 1e9, rel=1e-6)
        assert m["bare_ms_p50"] > 0 and m["bare_fps"] > 0 and m["lossless_fps"] > 0
        assert 0 < m["e2e_ms_p50"] <= m["e2e_ms_p99"]
        # end to end holds the server's time on each frame, which holds the engine's own
        assert m["e2e_ms_p50"] >= m["server_ms_p50"] >= m["stages_ms_p50"]["infer"] > 0
        assert m["frames"] == 4


def test_report_files(frontier_run: tuple[dict[str, Any], Path]) -> None:
    """frontier.json (the report), frontier.md (a row per model × precision and the Gaussian) and a PNG."""
    r, out = frontier_run
    assert json.loads((out / "frontier.json").read_text()) == r
    md = (out / "frontier.md").read_text()
    assert md.count("| fp32 |") == 2 and "Gaussian filter" in md and "skipped" in md
    png = (out / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bad_arguments(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """Unknown precisions, no models and a mismatched reference are refused before anything runs."""
    run, raw = trained_run["run"], trained_run["raw"]
    with pytest.raises(ValueError, match="expected precisions among"):
        frontier.run_frontier([run], raw, trained_run["truth"], precisions=["int4"])
    with pytest.raises(ValueError, match="at least one model"):
        frontier.run_frontier([], raw, trained_run["truth"])
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="expected a reference of"):
        frontier.run_frontier([run], raw, small, sizes=[32])


def test_k_axis_joins_one_network_across_frames_of_history() -> None:
    """Models that differ only in K (and the K-frame front end) form one network's K axis, each at its fastest
    precision, against its K = 1 model; a network measured at one K only has no axis."""
    def row(model: str, k: int, precision: str, psnr: float, fps: float, filters: list[int]) -> dict[str, Any]:
        arch = {"depth": 3, "filters": filters, "base_filters": 32, "block": "conv", "skip": "concat", "stem": "none"}
        if k > 1:
            arch.update(input_frames=k, frame_stem=4, residual_frames="mix")
        return {"model": model, "input_frames": k, "precision": precision, "psnr": psnr, "architecture": arch,
                "sizes": {"512": {"lossless_fps": fps}}}

    report = {"sizes": [512], "rows": [
        row("fast", 1, "fp32", 42.0, 80.0, [4, 16, 32, 64]), row("fast", 1, "bf16", 41.99, 120.0, [4, 16, 32, 64]),
        row("fast-k4", 4, "bf16", 44.0, 90.0, [4, 16, 32, 64]), row("fast-k2", 2, "bf16", 43.0, 110.0, [4, 16, 32, 64]),
        row("wide", 1, "bf16", 42.3, 15.0, [32, 64, 128, 256]),
        row("fast-k4-longer", 4, "bf16", 44.2, 95.0, [4, 16, 32, 64])]}  # a second K = 4 model: the first stands
    axis = frontier.k_axis(report)
    assert list(axis) == ["depth 3, filters [4, 16, 32, 64]"]  # the wide network has one K: no axis
    ks = axis["depth 3, filters [4, 16, 32, 64]"]
    assert [v["input_frames"] for v in ks] == [1, 2, 4] and ks[0]["precision"] == "bf16"  # its fastest
    assert ks[2]["psnr_over_k1"] == pytest.approx(44.0 - 41.99) and ks[2]["fps_over_k1"] == pytest.approx(0.75)
    assert "| depth 3, filters [4, 16, 32, 64] | 4 | 44.00 | +2.01 | 90.0 | 0.75 |" in frontier.k_axis_table(report)
    assert frontier.k_axis_table({**report, "rows": report["rows"][-1:]}) == []


def test_a_k_frame_model_is_scored_with_its_history(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """The frontier's quality of a K-frame model is what n2n evaluate scores: each frame with the ones before it."""
    from conftest import tiny_train_dict

    from trainer.config import TrainConfig
    from trainer.run import run_training

    run = tmp_path / "k2"
    run_training(TrainConfig.model_validate(tiny_train_dict(model={"input_frames": 2, "frame_stem": 2,
                                                                   "residual_frames": "mix"})),
                 run, [trained_run["raw"]])
    raw, ref = tifffile.imread(trained_run["raw"]), tifffile.imread(trained_run["truth"])
    q = frontier.quality(run, "fp32", raw, ref, float(ref.max() - ref.min()), threads=1)
    expected, _ = evaluate(load_run(run), raw, ref, FP32)
    assert q["psnr"] == pytest.approx(expected["psnr_denoised"], abs=1e-3)
