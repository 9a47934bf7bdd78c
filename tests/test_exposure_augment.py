"""Training pairs at other exposures (issue 30): thinning and sums follow the camera's noise model, the sampler
draws them as Noise2Noise pairs, a run trained with them records it, and bench.exposure reports consistent rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_train_dict, write_tiff

from streamer.core.card import ModelCard, Normalization
from streamer.sources import SimulatedCameraConfig, simulate_stack
from trainer.config import ROBUST_DATA, TrainConfig
from trainer.pairs import ExposureAugment, PairSampler

FLAT = SimulatedCameraConfig(height=96, width=96, sample="flat", exposure_ms=20.0, seed=2)
GAIN, OFFSET, READ = 1 / FLAT.gain_e_per_adu, FLAT.offset_adu, FLAT.read_noise_e / FLAT.gain_e_per_adu


def _photon_transfer(frames: np.ndarray) -> tuple[float, float]:
    """(mean above the offset, variance) of a flat field's frames."""
    return float(frames.mean() - OFFSET), float(frames.var(axis=0).mean())


def test_thinned_and_summed_frames_follow_the_camera_model() -> None:
    """A flat field at 1/4 and at 4 times the light: the mean scales, and the variance is the camera's
    gain·mean + read noise², as a real exposure of that length gives (photon transfer)."""
    raw, _ = simulate_stack(FLAT, 48)
    aug = ExposureAugment(0.25, 16, GAIN, OFFSET, READ)
    rng = np.random.default_rng(0)
    m1, _ = _photon_transfer(raw.astype(np.float64))
    thin = np.stack([aug.thin(f, 0.25, rng) for f in raw])
    m, v = _photon_transfer(thin)
    assert m == pytest.approx(0.25 * m1, rel=0.05)
    assert v == pytest.approx(GAIN * m + READ**2, rel=0.1)
    sums = np.stack([aug.summed(raw[i : i + 4]) for i in range(0, 48, 4)])
    m, v = _photon_transfer(sums)
    assert m == pytest.approx(4 * m1, rel=0.02)
    assert v == pytest.approx(GAIN * m + 4 * READ**2, rel=0.15)


@pytest.mark.parametrize("k", [1, 3])
def test_sampler_draws_pairs_at_other_exposures(k: int) -> None:
    raw, _ = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 24)
    norm = Normalization.fit_anscombe([raw])
    aug = ExposureAugment(0.25, 16, norm.gain, norm.offset, norm.read_noise, share=1.0)  # type: ignore[arg-type]
    sampler = PairSampler([raw], 32, [56], seed=0, k=k, augment=aug, normalize=norm.normalize)
    x, y = sampler.sample(64)
    assert x.shape == (64, k, 32, 32) and y.shape == (64, 1, 32, 32) and x.dtype == np.float32
    plain = PairSampler([norm.normalize(raw)], 32, [56], seed=0, k=k)
    px, _ = plain.sample(64)
    # some pairs much brighter (sums) and some dimmer (thinned) than any recorded pair
    means = x.reshape(64, -1).mean(axis=1)
    assert means.max() > 2 * px.reshape(64, -1).mean(axis=1).max()
    assert means.min() < 0.8 * px.reshape(64, -1).mean(axis=1).min()
    # the target is a Noise2Noise partner of the same light: its mean follows the input's
    assert np.corrcoef(means, y.reshape(64, -1).mean(axis=1))[0, 1] > 0.95
    x2, _ = PairSampler([raw], 32, [56], seed=0, k=k, augment=aug, normalize=norm.normalize).sample(64)
    np.testing.assert_array_equal(x, x2)


def test_exposure_augment_is_validated() -> None:
    with pytest.raises(ValueError, match="0 < low <= 1 <= high"):
        TrainConfig.model_validate(tiny_train_dict(data={"exposure_augment": [2, 4]}))
    with pytest.raises(ValueError, match="needs the camera's frames"):
        PairSampler([np.zeros((4, 64, 64), np.float32)], 32, [64], augment=ExposureAugment(0.5, 2, 1, 0, 1))


def test_a_robust_run_records_its_settings_and_refuses_the_zoo(tmp_path: Path) -> None:
    from trainer.run import run_training
    from trainer.zoo import ZooExportError, export_bioimageio

    raw, truth = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 8)
    cfg = TrainConfig.model_validate(tiny_train_dict(data=ROBUST_DATA))
    card = run_training(cfg, tmp_path / "run", [write_tiff(tmp_path / "raw.ome.tif", raw)],
                        [write_tiff(tmp_path / "gt.ome.tif", truth)])
    assert card.normalization.kind == "anscombe"
    assert card.training["config"]["data"]["exposure_augment"] == [0.25, 16.0]
    assert ModelCard.load(tmp_path / "run").normalization == card.normalization
    with pytest.raises(ZooExportError, match="camera's noise model"):
        export_bioimageio(tmp_path / "run", tmp_path / "pkg.zip")


def test_bench_exposure_reports_every_exposure(tmp_path: Path) -> None:
    from bench.exposure import main

    out = tmp_path / "exp"
    rc = main(["--out", str(out), "--size", "64", "--frames", "6", "--epochs", "1", "--test-frames", "2",
               "--test-ms", "3", "10", "--averages", "2", "--no-matched", "--json", str(tmp_path / "r.json"),
               "--set", "optim.steps_per_epoch=5", "--set", "data.patch_size=32", "--set", "quantize.int8=false",
               "--set", "data.val_pairs=2"])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["exposure_ms"] for r in report["rows"]] == [3.0, 10.0]
    for row in report["rows"]:
        assert row["default_precision"] in ("fp32", "bf16", "int8")
        assert np.isfinite([row["psnr_raw"], row["psnr_default"], row["psnr_fp32"], row["psnr_gaussian"]]).all()
    assert report["rows"][0]["psnr_raw"] < report["rows"][1]["psnr_raw"]  # more light, less noise
    (avg,) = report["averaged"]
    assert avg["averaged"] == 2 and avg["psnr_raw"] > report["rows"][1]["psnr_raw"]  # a mean of 2: less noise
    assert np.isfinite([avg["psnr_told"], avg["psnr_untold"]]).all() and avg["psnr_told"] != avg["psnr_untold"]


def test_supervised_targets_follow_the_drawn_exposure() -> None:
    """With a clean reference as the target (CARE mode), a dimmer input gets the reference at that light too."""
    raw, truth = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 8)
    norm = Normalization.fit_anscombe([raw])
    aug = ExposureAugment(0.25, 1.0, norm.gain, norm.offset, norm.read_noise, share=1.0)  # type: ignore[arg-type]
    x, y = PairSampler([raw], 32, [56], targets=[truth], seed=0, augment=aug, normalize=norm.normalize).sample(64)
    means_x, means_y = x.reshape(64, -1).mean(axis=1), y.reshape(64, -1).mean(axis=1)
    assert np.corrcoef(means_x, means_y)[0, 1] > 0.95
    assert means_y.min() < 0.8 * norm.normalize(truth[:, :56]).mean()
