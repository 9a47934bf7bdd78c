"""Bad inputs across the library: broken run folders, wrong arrays, missing devices, bad data lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.core.card import Normalization
from trainer.card import CardError, ModelCard, read_card
from trainer.config import TrainConfig
from trainer.inference import load_run, load_weights, pick_device, predict
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


def test_card_save_is_atomic_and_versioned(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """ModelCard.save writes card_version and a timestamp and leaves no temporary file."""
    card = read_card(trained_run["run"])
    card.name = "x"

    card.save(tmp_path)

    raw = json.loads((tmp_path / "model.json").read_text())
    assert raw["card_version"] == 1 and raw["name"] == "x" and "created" in raw
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


@pytest.mark.parametrize(("change", "match"), [
    (lambda c: c["normalization"].update(std=0), r"normalization\.std: Input should be greater than 0"),
    (lambda c: c["architecture"].update(block="fancy"), r"architecture\.block"),
    (lambda c: c.update(colour="blue"), r"colour: Extra inputs are not permitted"),
    (lambda c: c.pop("tile"), r"tile: Field required"),
])
def test_malformed_card_names_the_field(run_copy: Path, change, match: str) -> None:
    """A card with a wrong, unknown or missing field is refused, naming the field and the file."""
    card = json.loads((run_copy / "model.json").read_text())
    change(card)
    (run_copy / "model.json").write_text(json.dumps(card))

    with pytest.raises(CardError, match=match) as info:
        ModelCard.load(run_copy)
    assert str(run_copy / "model.json") in str(info.value)


def test_changed_artifact_is_refused(run_copy: Path) -> None:
    """A model.onnx that is not the file the card recorded (sha256) is a clear error on use."""
    with open(run_copy / "model.onnx", "ab") as f:
        f.write(b"\0")

    with pytest.raises(CardError, match=r"model\.onnx: changed since the model card was written"):
        ModelCard.load(run_copy).artifact("onnx")


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
    """predict() accepts (H, W) or (N, H, W) only."""
    net = UNet(depth=1, base_filters=4)

    with pytest.raises(ValueError, match=r"\(H, W\) frame or \(N, H, W\) stack"):
        predict(net, Normalization(mean=0.0, std=1.0), np.zeros(shape, np.float32))


def test_denoise_keeps_shape_units_and_mode() -> None:
    """predict() of one frame returns (H, W) float32 in input units and restores training mode."""
    net = UNet(depth=1, base_filters=4, residual=True)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    net.train()
    frame = np.random.default_rng(0).integers(100, 200, (19, 23)).astype(np.uint16)

    out = predict(net, Normalization(mean=150.0, std=20.0), frame)

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
