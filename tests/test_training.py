"""The training loop on tiny simulated data: it learns, checkpoints, resumes, is seeded, refuses bad data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from streamer.sources import SimulatedCameraConfig, simulate_stack
from trainer.config import TrainConfig, load_config
from trainer.inference import WEIGHTS_NAME, load_weights, predict
from trainer.loop import CHECKPOINT_NAME, check_stacks, train

ConfigFactory = Callable[..., TrainConfig]
# Enough capacity and steps (about 1 s on one core) for a clear denoising effect.
LEARNS = {"model": {"depth": 2, "base_filters": 16},
          "optim": {"epochs": 6, "steps_per_epoch": 10, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5}}


@pytest.fixture(scope="module")
def frames() -> tuple[np.ndarray, np.ndarray]:
    """Eight noisy 64×64 simulated frames and their truth."""
    return simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 8)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / WEIGHTS_NAME, map_location="cpu", weights_only=True)["state_dict"]


def test_training_lowers_the_loss(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """Over 6 epochs × 10 steps the training and validation losses fall and PSNR vs truth rises."""
    raw, truth = frames
    cfg = tiny_config(**LEARNS)

    result = train(cfg, [raw], tmp_path, references=[truth])

    h = result.history
    assert [e["epoch"] for e in h] == [1, 2, 3, 4, 5, 6]
    assert h[-1]["train_loss"] < 0.95 * h[0]["train_loss"]
    assert min(e["val_loss"] for e in h[1:]) < h[0]["val_loss"]
    assert h[-1]["val_psnr"] > h[0]["val_psnr"]
    assert h[-1]["val_psnr"] > h[-1]["val_psnr_raw"]  # denoised held-out rows beat the raw ones
    assert len({e["val_psnr_raw"] for e in h}) == 1  # the raw score is fixed: same held-out frames
    assert result.stopped == "completed all epochs" and result.epochs == 6 and result.steps == 60
    assert result.precision == "fp32" and result.device == "cpu"


def test_model_beats_raw_frames(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """The trained model's output is closer to the truth than the noisy input on held-out rows."""
    raw, truth = frames
    train(tiny_config(**LEARNS), [raw], tmp_path)
    net, norm = load_weights(tmp_path)
    den = predict(net, norm, raw[:2])

    mse_raw = np.mean((raw[:2].astype(np.float64) - truth[:2]) ** 2)
    mse_den = np.mean((den.astype(np.float64) - truth[:2]) ** 2)
    assert mse_den < 0.5 * mse_raw


def test_writes_checkpoint_and_weights(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """A run writes checkpoint.pt (last epoch, full state) and model.pt (best weights, normalisation)."""
    cfg = tiny_config()

    result = train(cfg, [frames[0]], tmp_path)

    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert ckpt["config"] == cfg.model_dump(mode="json")
    assert {"model", "optimizer", "scheduler", "sampler_rng", "torch_rng", "best_model"} <= set(ckpt)
    net, norm = load_weights(tmp_path)
    best = result.best_epoch
    assert 1 <= best <= 2
    assert norm.mean == pytest.approx(float(frames[0].mean()), rel=1e-6)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, ckpt["best_model"][k])
    assert not list(tmp_path.glob("*.tmp"))


def test_same_seed_same_weights(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """Two fp32 runs with the same seed end with identical weights; another seed differs."""
    raw = frames[0]
    train(tiny_config(), [raw], tmp_path / "a")
    train(tiny_config(), [raw], tmp_path / "b")
    train(tiny_config(optim={"seed": 1}), [raw], tmp_path / "c")

    a, b, c = (_weights(tmp_path / n) for n in "abc")

    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_like_an_uninterrupted_run(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """A run stopped by its time limit after 1 epoch, resumed without it, matches an uninterrupted run."""
    raw = frames[0]
    cut = tiny_config(optim={"epochs": 3, "max_minutes": 1e-6})
    full = tiny_config(optim={"epochs": 3})

    first = train(cut, [raw], tmp_path / "cut")
    resumed = train(full, [raw], tmp_path / "cut", resume=True)
    reference = train(full, [raw], tmp_path / "full")

    assert first.epochs == 1 and first.stopped.startswith("time limit")
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    for got, want in zip(resumed.history, reference.history):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-6)
    a, b = _weights(tmp_path / "cut"), _weights(tmp_path / "full")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_resume_with_more_epochs_extends_history(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """Resuming a finished 2-epoch run with epochs=4 trains epochs 3 and 4 only."""
    raw = frames[0]
    train(tiny_config(), [raw], tmp_path)

    result = train(tiny_config(optim={"epochs": 4}), [raw], tmp_path, resume=True)

    assert [e["epoch"] for e in result.history] == [1, 2, 3, 4]
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 4


def test_resume_finished_run_trains_no_more(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """Resuming a finished run with the same config runs no epoch and keeps its history and weights."""
    raw = frames[0]
    first = train(tiny_config(), [raw], tmp_path)
    before = _weights(tmp_path)

    again = train(tiny_config(), [raw], tmp_path, resume=True)

    assert again.epochs == first.epochs == 2
    assert again.history == first.history
    assert again.best_epoch == first.best_epoch
    after = _weights(tmp_path)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)


def test_resume_without_checkpoint(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """resume=True in a folder with no checkpoint raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError, match="nothing to resume from"):
        train(tiny_config(), [frames[0]], tmp_path, resume=True)


def test_resume_with_different_config(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """Resuming with a changed architecture or learning rate raises ValueError naming the keys."""
    raw = frames[0]
    train(tiny_config(), [raw], tmp_path)

    with pytest.raises(ValueError, match=r"different configuration \(model.base_filters, optim.learning_rate"):
        train(tiny_config(model={"base_filters": 4}, optim={"learning_rate": 5e-4}), [raw], tmp_path, resume=True)


def test_supervised_learns_from_references(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """Supervised mode trains frame → reference and reports PSNR against it."""
    raw, truth = frames
    cfg = tiny_config(mode="supervised", optim={"epochs": 2, "steps_per_epoch": 8})

    result = train(cfg, [raw[:3]], tmp_path, references=[truth[0]])

    assert "val_psnr" in result.metrics and np.isfinite(result.metrics["val_psnr"])


def test_supervised_needs_references(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """Supervised mode without one reference per stack raises ValueError."""
    cfg = tiny_config(mode="supervised")

    with pytest.raises(ValueError, match="one clean reference per stack: 1 stacks, 0 references"):
        train(cfg, [frames[0]], tmp_path)
    assert not (tmp_path / WEIGHTS_NAME).exists()


@pytest.mark.parametrize(
    ("stack", "message"),
    [
        (np.ones((64, 64), np.float32), r"expected a \(T, H, W\) time series, got shape \(64, 64\)"),
        (np.ones((1, 64, 64), np.float32), "Noise2Noise needs at least 2 consecutive frames, got 1"),
        (np.full((3, 64, 64), np.nan, np.float32), "NaN or infinite"),
    ],
    ids=["2d", "single-frame", "nan"],
)
def test_bad_stacks_rejected(tmp_path: Path, tiny_config: ConfigFactory, stack: np.ndarray, message: str) -> None:
    """2-D, single-frame and NaN stacks raise ValueError saying what was expected, before training."""
    with pytest.raises(ValueError, match=message):
        train(tiny_config(), [stack], tmp_path)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_constant_stack_rejected(tmp_path: Path, tiny_config: ConfigFactory) -> None:
    """A constant stack raises ValueError (nothing to learn)."""
    with pytest.raises(ValueError, match="constant"):
        train(tiny_config(), [np.full((3, 64, 64), 5, np.uint16)], tmp_path)


def test_frames_too_small_for_patches(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """Frames too short for a patch plus the validation strip raise ValueError with advice."""
    with pytest.raises(ValueError, match="use larger frames or a smaller patch_size"):
        train(tiny_config(), [frames[0][:, :34, :]], tmp_path)


def test_reference_shape_mismatch(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """A reference of the wrong size raises ValueError naming the expected shapes."""
    with pytest.raises(ValueError, match=r"Reference 0: expected \(H, W\)"):
        train(tiny_config(), [frames[0]], tmp_path, references=[np.ones((32, 32), np.float32)])


def test_check_stacks_accepts_good_data(frames) -> None:
    """check_stacks passes integer and float (T, H, W) stacks with matching references."""
    raw, truth = frames

    check_stacks([raw, truth], "n2n", [truth, truth[0]])
    check_stacks([raw], "supervised", [truth])


def test_cli_config_file_trains_the_same(tmp_path: Path, tiny_config_dict, frames) -> None:
    """A config read from YAML gives the same weights as the same config built in code."""
    raw = frames[0]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict()))

    train(load_config(TrainConfig, path), [raw], tmp_path / "a")
    train(TrainConfig.model_validate(tiny_config_dict()), [raw], tmp_path / "b")

    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_a_checkpoint_from_before_the_model_family(tmp_path: Path, tiny_config: ConfigFactory, frames) -> None:
    """A checkpoint whose config predates newer options (model.skip, quantize, ...) resumes: the options it
    lacks took their defaults, so they are not changes."""
    import torch

    cfg = tiny_config(optim={"epochs": 1})
    train(cfg, frames, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("filters", "block", "skip", "stem"):
        ckpt["config"]["model"].pop(key)
    ckpt["config"].pop("quantize")
    torch.save(ckpt, tmp_path / "checkpoint.pt")

    result = train(tiny_config(optim={"epochs": 2}), frames, tmp_path, resume=True)

    assert result.epochs == 2
