"""INT8 (NNCF, OpenVINO): calibrated on the run's training frames, kept only if it passes its check on
the held-out rows, served by ``--precision int8`` and preferred by ``auto`` only where it is fastest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamer.core.card import ModelCard
from streamer.denoiser import Denoiser
from streamer.engines import create_engine
from trainer.pairs import split_rows
from trainer.quantize import INT8_NAME, quantize_int8

pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    from streamer.sources import SimulatedCameraConfig, simulate_stack

    return simulate_stack(SimulatedCameraConfig(height=96, width=96, exposure_ms=10.0, seed=5), 8)


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory, frames: tuple[np.ndarray, np.ndarray]) -> Path:
    """A tiny run (trained briefly) with an INT8 export made under a loose limit, so that it is kept."""
    from conftest import train_tiny

    run, _ = train_tiny(tmp_path_factory.mktemp("int8"), frames[0], model={"depth": 2, "base_filters": 8},
                        data={"patch_size": 32}, optim={"epochs": 2, "steps_per_epoch": 20},
                        quantize={"int8": True, "max_loss_db": 3.0, "calibration_patches": 8, "patch_size": 64})
    return run


def _splits(stacks: list[np.ndarray], multiple: int) -> list[int]:
    return [split_rows(s.shape[1], 0.1, multiple, 32) for s in stacks]


def test_kept_int8_is_listed_checked_and_served(int8_run: Path, frames: tuple[np.ndarray, np.ndarray]) -> None:
    """Training writes model_int8.xml/.bin, the card lists them with their sha256 and the check's figures,
    and `--precision int8` serves it close to float32."""
    card = ModelCard.load(int8_run)
    q = card.quantization

    assert q is not None and q.status == "kept", q
    assert (int8_run / INT8_NAME).is_file() and (int8_run / "model_int8.bin").is_file()
    art = card.artifacts["openvino_int8"]
    assert art.weights == "model_int8.bin" and card.artifact("openvino_int8") == int8_run / INT8_NAME
    assert q.check["loss_db"] <= q.max_loss_db == 3.0 and q.check["passed"]
    assert q.calibration["frames"] == "training rows of the run's own frames" and q.calibration["patches"] == 8
    assert "of" in q.check["int8_convolutions"]

    frame = frames[0][-1]
    outs = {}
    for precision in ("fp32", "int8"):
        engine = create_engine("openvino", card, precision=precision, num_threads=1)
        outs[precision] = Denoiser(card, engine, output_dtype="float32")(frame)
        assert engine.precision == precision
    rel = np.linalg.norm(outs["int8"] - outs["fp32"]) / np.linalg.norm(outs["fp32"])
    assert 0 < rel < 0.05


def test_auto_times_the_checked_precisions(int8_run: Path) -> None:
    """'auto' with an INT8 export times every precision that passed its check and keeps the fastest (retime: a
    choice an earlier test recorded in the run folder is not taken, see tests/test_precision_choice.py)."""
    engine = create_engine("openvino", ModelCard.load(int8_run), precision="auto", num_threads=1, retime=True)
    engine.prepare((1, 1, 64, 64))

    assert "fastest here:" in engine.precision_note and "int8" in engine.precision_note
    timed = engine.precision_note.split("fastest here: ")[1]
    assert timed.split(" ")[0] == engine.precision  # the first listed is the fastest, and it was chosen


def test_wrong_calibration_falls_back_with_the_reason(int8_run: Path, tmp_path: Path,
                                                      frames: tuple[np.ndarray, np.ndarray]) -> None:
    """Calibrated on noise a thousand times too bright, INT8 fails its check: nothing is written, an older
    INT8 export is removed, the card says why, and `--precision int8` falls back to fp32 with that reason."""
    run = tmp_path / "run"
    shutil.copytree(int8_run, run)
    stacks = [frames[0]]
    wrong = [np.random.default_rng(i).normal(0, 1000, (1, 1, 64, 64)).astype(np.float32) for i in range(4)]

    q = quantize_int8(run, stacks, None, _splits(stacks, 4), "n2n", val_pairs=2, max_loss_db=0.1,
                      calibration=wrong)

    assert q.status == "rejected" and "not written" in q.reason
    assert not (run / INT8_NAME).exists() and not (run / "model_int8.bin").exists()
    card = json.loads((run / "model.json").read_text())
    assert "openvino_int8" not in card["artifacts"] and card["quantization"]["status"] == "rejected"
    engine = create_engine("openvino", ModelCard.load(run), precision="int8", num_threads=1)
    engine.prepare((1, 1, 64, 64))
    assert engine.precision == "fp32"
    assert "int8 not available" in engine.precision_note and "not written" in engine.precision_note


def test_changed_int8_file_is_refused(int8_run: Path, tmp_path: Path) -> None:
    """An INT8 .bin that is not the one the card recorded is an error when the engine loads it."""
    from streamer.core.card import CardError

    run = tmp_path / "run"
    shutil.copytree(int8_run, run)
    with open(run / "model_int8.bin", "ab") as f:
        f.write(b"\0\0")

    with pytest.raises(CardError, match=r"model_int8\.bin: changed since the model card was written"):
        create_engine("openvino", ModelCard.load(run), precision="int8")


def test_export_int8_from_the_cli_reads_the_training_data(int8_run: Path, tmp_path: Path) -> None:
    """`n2n export --format int8` re-reads the run's training frames (sha256-checked) and re-quantizes."""
    from typer.testing import CliRunner

    from n2n.cli import app

    run = tmp_path / "run"
    shutil.copytree(int8_run, run)
    (run / INT8_NAME).unlink()

    result = CliRunner().invoke(app, ["export", "--model", str(run), "--format", "int8", "--max-loss-db", "3"])

    assert result.exit_code == 0, result.output
    assert (run / INT8_NAME).is_file() and ModelCard.load(run).quantization.status == "kept"
    card = json.loads((run / "model.json").read_text())
    trained_on = Path(card["training"]["data"]["data"][0]["path"])
    moved = tmp_path / "moved.tif"
    trained_on.rename(moved)  # the frames it was trained on are gone: a clear error, nothing changed
    try:
        gone = CliRunner().invoke(app, ["export", "--model", str(run), "--format", "int8"])
    finally:
        moved.rename(trained_on)
    assert gone.exit_code == 2 and "the run was trained on it, but it is gone" in " ".join(gone.output.split())
    assert (run / INT8_NAME).is_file()


def test_changed_int8_file_does_not_stop_float_serving(int8_run: Path, tmp_path: Path) -> None:
    """A bad INT8 file blocks only INT8: fp32 serves without reading it, auto serves without it (and says so)."""
    run = tmp_path / "run"
    shutil.copytree(int8_run, run)
    with open(run / "model_int8.bin", "ab") as f:
        f.write(b"\0")
    card = ModelCard.load(run)

    for precision in ("fp32", "auto"):
        engine = create_engine("openvino", card, precision=precision, num_threads=1)
        engine.prepare((1, 1, 64, 64))
        assert engine.precision != "int8"
    assert "not used" in engine.precision_note and "changed since the model card was written" in engine.precision_note
