"""Training ends with an estimate of the gain over raw, no reference needed (trainer/gain.py): on simulated
frames whose truth is known, the Noise2Noise estimate of the MSE against the clean image matches the true one,
for a Gaussian filter (its sigma chosen by the estimate itself) and for the served model; ``n2n train`` prints
it, and warns when the model does not beat the Gaussian filter."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from n2n.cli import app, expand_multi_value
from streamer.denoiser import Denoiser
from streamer.sources import SimulatedCameraConfig, simulate_stack
from trainer.card import read_card
from trainer.gain import NOT_BETTER_THAN_GAUSSIAN, estimate_gain, gain_summary
from trainer.pairs import held_out_pairs

SPLIT = 64
"""Rows 64… of 128-row frames are the held-out rows."""


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray]:
    """24 frames of 128² from the simulated camera (the trained run's settings) and their truth."""
    return simulate_stack(SimulatedCameraConfig(height=128, width=128, exposure_ms=10.0, seed=5), 24)


def true_mse(outputs: list[np.ndarray], items: list) -> float:
    """The pooled MSE against the simulator's truth (what the estimate must find without it)."""
    se = sum(float(np.sum((o.astype(np.float64) - r) ** 2)) for o, (_, _, r, _) in zip(outputs, items))
    return se / sum(r.size for _, _, r, _ in items)


def test_estimate_matches_the_true_gain(trained_run: dict[str, Path], stack: tuple[np.ndarray, np.ndarray]) -> None:
    """The noise variance is the raw frames' true MSE; the Gaussian filter's and the served model's estimated
    gains are their true gains against the truth, within 0.5 dB."""
    raw, truth = stack
    run = trained_run["run"]

    gain = estimate_gain(run, [raw], [SPLIT], 1)

    items = held_out_pairs([raw], [SPLIT], [truth], "n2n", 32, 1)
    assert gain["pairs"] == len(items) == 23
    mse_raw = true_mse([x for x, *_ in items], items)
    assert gain["noise_variance"] == pytest.approx(mse_raw, rel=0.05)
    sigma = gain["gaussian_sigma"]
    assert 0.6 <= sigma <= 3
    true_gauss = 10 * math.log10(mse_raw / true_mse([gaussian_filter(x.astype(np.float64), sigma)
                                                     for x, *_ in items], items))
    assert true_gauss > 3  # a real gain to estimate
    assert gain["gain_db_gaussian"] == pytest.approx(true_gauss, abs=0.5)

    served = Denoiser.from_model_dir(run)  # what the estimate ran: n2n serve's defaults
    try:
        true_model = 10 * math.log10(mse_raw / true_mse([served(x) for x, *_ in items], items))
        assert (gain["engine"], gain["precision"]) == (served.engine.name, served.engine.precision)
    finally:
        served.engine.close()
    assert gain["gain_db_model"] == pytest.approx(true_model, abs=0.5)
    assert gain["frames_raw"] == 0


def test_raw_frames_score_zero_db(stack: tuple[np.ndarray, np.ndarray]) -> None:
    """A 'denoiser' that returns its input gains nothing: 0 dB, by the identity itself."""

    class Identity:
        class engine:
            name, precision = "identity", "none"

        def __call__(self, pixels: np.ndarray, previous: object = ()) -> np.ndarray:
            return pixels

    gain = estimate_gain("unused", [stack[0]], [SPLIT], 1, denoiser=Identity())
    assert gain["gain_db_model"] == pytest.approx(0.0, abs=1e-9)
    assert gain["gain_db_gaussian"] > 3


def test_training_records_the_estimate(trained_run: dict[str, Path]) -> None:
    """A run's card holds the estimated gains (floats, as metrics) once training ends."""
    metrics = read_card(trained_run["run"]).metrics
    assert isinstance(metrics["estimated_gain_db"], float)
    assert isinstance(metrics["estimated_gain_db_gaussian"], float)
    line, _ = gain_summary(metrics)
    assert line is not None and line.endswith("no reference needed")


def test_a_bad_model_is_warned_about(tmp_path: Path, tiny_config_dict, write_stack) -> None:
    """``n2n train`` for a single step: the summary prints the estimated gains, and warns that the model is not
    better than a Gaussian filter (it is not: the estimate says so, no reference given)."""
    raw, _ = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=8), 12)
    data = write_stack(tmp_path / "raw.ome.tif", raw)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(optim={"epochs": 1, "steps_per_epoch": 1, "warmup_steps": 0},
                                                   data={"frames": 12})))
    out = tmp_path / "run"

    result = CliRunner().invoke(app, expand_multi_value(["train", "--config", str(cfg), "--out", str(out),
                                                         "--data", str(data)]))

    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    metrics = read_card(out).metrics
    assert metrics["estimated_gain_db"] < metrics["estimated_gain_db_gaussian"]
    text = " ".join(result.output.replace("│", " ").split())  # the summary table's cells, as words
    line = (f"estimated gain over raw {metrics['estimated_gain_db']:+.1f} dB (Gaussian filter: "
            f"{metrics['estimated_gain_db_gaussian']:+.1f} dB), no reference needed")
    assert line in text
    assert NOT_BETTER_THAN_GAUSSIAN in text
    assert gain_summary(metrics)[1] == NOT_BETTER_THAN_GAUSSIAN
