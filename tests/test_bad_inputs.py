"""Bad inputs across the library: broken run folders, wrong arrays, missing devices, bad data lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.card import read_card, write_card
from trainer.config import TrainConfig
from trainer.inference import denoise, load_run, load_weights, pick_device
from trainer.normalization import Normalization
from trainer.run import gather_data
from trainer.unet import UNet


def test_load_run_missing_folder(tmp_path: Path) -> None:
    """load_run of a missing folder raises FileNotFoundError pointing at `n2n train`."""
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        load_run(tmp_path / "nope")


def test_load_run_without_card(tmp_path: Path) -> None:
    """A folder with no model.json raises FileNotFoundError asking whether it is a run."""
    with pytest.raises(FileNotFoundError, match="no model card"):
        load_run(tmp_path)


def test_load_run_without_weights(run_copy: Path) -> None:
    """A run whose model.pt is gone raises FileNotFoundError saying training may not have finished."""
    (run_copy / "model.pt").unlink()

    with pytest.raises(FileNotFoundError, match="may not have finished training"):
        load_run(run_copy)


def test_card_version_mismatch(run_copy: Path) -> None:
    """A model.json of another card version is refused with both versions named."""
    card = json.loads((run_copy / "model.json").read_text())
    card["card_version"] = 99
    (run_copy / "model.json").write_text(json.dumps(card))

    with pytest.raises(ValueError, match="expected card_version 1, got 99"):
        read_card(run_copy)


def test_write_card_is_atomic_and_versioned(tmp_path: Path) -> None:
    """write_card adds card_version and a timestamp and leaves no temporary file."""
    write_card(tmp_path, {"name": "x"})

    card = read_card(tmp_path)
    assert card["card_version"] == 1 and card["name"] == "x" and "created" in card
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_loaded_run_denoises_like_saved_weights(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """A run folder copied elsewhere loads the same network and normalisation."""
    dst = tmp_path / "moved"
    shutil.copytree(trained_run["run"], dst)

    a, b = load_run(trained_run["run"]), load_weights(dst)

    assert a.normalization == b[1]
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b[0].state_dict()[k])


@pytest.mark.parametrize("shape", [(8,), (1, 1, 16, 16)])
def test_denoise_rejects_wrong_dimensions(shape: tuple[int, ...]) -> None:
    """denoise() accepts (H, W) or (N, H, W) only."""
    net = UNet(depth=1, base_filters=4)

    with pytest.raises(ValueError, match=r"\(H, W\) frame or \(N, H, W\) stack"):
        denoise(net, Normalization(0.0, 1.0), np.zeros(shape, np.float32))


def test_denoise_keeps_shape_units_and_mode() -> None:
    """denoise() of one frame returns (H, W) float32 in input units and restores training mode."""
    net = UNet(depth=1, base_filters=4, residual=True)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    net.train()
    frame = np.random.default_rng(0).integers(100, 200, (19, 23)).astype(np.uint16)

    out = denoise(net, Normalization(150.0, 20.0), frame)

    assert out.shape == (19, 23) and out.dtype == np.float32
    np.testing.assert_allclose(out, frame, atol=1e-3)  # identity network: same intensities back
    assert net.training


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_requested_without_gpu() -> None:
    """Asking for device 'cuda' without a GPU raises RuntimeError; 'auto' falls back to CPU."""
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"


def test_gather_data_without_data(tmp_path: Path) -> None:
    """Files mode with no --data raises ValueError explaining both ways to give data."""
    cfg = TrainConfig.model_validate({"data": {"source": "files"}})

    with pytest.raises(ValueError, match="No training data: give one or more stacks with --data"):
        gather_data(cfg, [], [], tmp_path)


def test_gather_data_reference_count(tmp_path: Path, sim_tiff) -> None:
    """One reference for two stacks raises ValueError with both counts."""
    raw, truth = sim_tiff
    cfg = TrainConfig()

    with pytest.raises(ValueError, match="2 stacks, 1 references"):
        gather_data(cfg, [raw, raw], [truth], tmp_path)


def test_gather_data_simulated_saves_frames(tmp_path: Path, tiny_config) -> None:
    """Simulated mode grabs the configured frames and saves frames.tif and truth.tif in the run."""
    cfg = tiny_config(data={"source": "simulated", "frames": 3})

    stacks, refs, prov = gather_data(cfg, [], [], tmp_path)

    assert stacks[0].shape == (3, 64, 64) and stacks[0].dtype == np.uint16
    assert refs is not None and refs[0].shape == (3, 64, 64)
    assert prov["source"] == "simulated" and prov["saved"] == ["frames.tif", "truth.tif"]
    assert (tmp_path / "frames.tif").is_file() and (tmp_path / "truth.tif").is_file()


def test_gather_data_supervised_accepts_single_frames(tmp_path: Path, sim_stack, write_stack) -> None:
    """Supervised mode reads one-frame stacks (N2N would refuse them) with a 2-D reference."""
    raw, truth = sim_stack
    one = write_stack(tmp_path / "one.tif", raw[:1])
    ref = write_stack(tmp_path / "ref.tif", truth[:1])
    cfg = TrainConfig.model_validate({"mode": "supervised"})

    stacks, refs, prov = gather_data(cfg, [one], [ref], tmp_path)

    assert stacks[0].shape == (1, 64, 64)
    assert refs is not None and refs[0].shape == (64, 64)
    assert prov["references_used_for"] == "targets"
