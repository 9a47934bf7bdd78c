"""The bright network (issue 30): a model trained at one exposure serves frames several times brighter with a second
network fine-tuned on sums of its frames. Trained into the model folder, recorded in the card, and served by the one
Denoiser for exactly the frames bright enough for it (frame by frame, in batches, averaged frames counted as the
light they carry), with the rest unchanged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_train_dict, train_tiny

from streamer.core.card import CardError, ModelCard, frame_peak
from streamer.denoiser import Denoiser
from streamer.sources import SimulatedCameraConfig, simulate_stack
from trainer.bright import summed_frames
from trainer.config import TrainConfig

ROBUST: dict[str, Any] = {"normalization": "anscombe", "exposure_augment": [0.25, 16.0], "frames": 24,
                          "bright_expert": {"band": [3.0, 16.0], "epochs_share": 0.5}}


def _frames(ms: float, n: int = 2) -> np.ndarray:
    raw, _ = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=ms, seed=5), n)
    return raw


@pytest.fixture(scope="module")
def bright_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw, truth = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 24)
    run, _ = train_tiny(tmp_path_factory.mktemp("bright"), raw, truth, data=ROBUST)
    return run


def test_the_bright_network_is_trained_and_recorded(bright_run: Path) -> None:
    card = ModelCard.load(bright_run)
    be = card.bright_expert
    assert be is not None and be.path == "bright" and be.band == [3.0, 16.0] and be.serves_from == 3.0
    raw = _frames(10.0, 24)  # (another field: the recorded peak is the training frames', near this one's)
    offset = float(card.normalization.offset)  # type: ignore[arg-type]
    assert be.reference_peak == pytest.approx(np.median([frame_peak(f) - offset for f in raw]), rel=0.3)
    bright = ModelCard.load(bright_run / "bright")
    assert bright.normalization == card.normalization  # the same normalisation: one noise model
    assert bright.training["bright_expert_of"] == card.name
    assert bright.training["epochs"] == 1  # 2 epochs × 0.5
    assert bright.training["data"]["summed_frames"] == 7  # validated on sums at √(3·16) ≈ 7× the light
    assert bright.architecture == card.architecture


def test_frames_bright_enough_go_to_the_bright_network_and_only_they(bright_run: Path) -> None:
    served = Denoiser.from_model_dir(bright_run, engine="onnxruntime", precision="fp32")
    first = Denoiser.from_model_dir(bright_run, engine="onnxruntime", precision="fp32")
    first.bright.close()  # type: ignore[union-attr]
    first.bright = None  # the first network alone
    bright = Denoiser.from_model_dir(bright_run / "bright", engine="onnxruntime", precision="fp32")
    try:
        dim, lit = _frames(10.0)[0], _frames(100.0)[0]
        assert not served.serves_bright(dim) and served.serves_bright(lit)
        assert np.array_equal(served(dim), first(dim)) and served.routed == 0
        out = served(lit)
        assert np.array_equal(out, bright(lit)) and not np.array_equal(out, first(lit))
        assert served.routed == 1 and served.info()["bright"]["frames"] == 1
        # a batch across the threshold: each frame by its network, in order
        mixed = served.batch([dim, lit, dim])
        assert [np.array_equal(a, b) for a, b in zip(mixed, [first(dim), bright(lit), first(dim)])] == [True] * 3
        assert served.routed == 2 and len(served.last_flags) == 3
        both = served.batch([lit, _frames(100.0)[1]])  # all bright: one batch of the bright network
        assert np.array_equal(both[0], bright(lit)) and served.routed == 4
    finally:
        for d in (served, first, bright):
            d.close()


def test_averaged_frames_count_as_the_light_they_carry(bright_run: Path) -> None:
    """A mean of 4 readouts at the training exposure has the light of a 4× exposure: the bright network's."""
    dim = _frames(10.0)[0]
    with_avg = Denoiser.from_model_dir(bright_run, engine="onnxruntime", precision="fp32", averaged=4)
    plain = Denoiser.from_model_dir(bright_run, engine="onnxruntime", precision="fp32")
    try:
        assert with_avg.serves_bright(dim) and not plain.serves_bright(dim)
    finally:
        with_avg.close()
        plain.close()


def test_sums_are_frames_at_that_light() -> None:
    """Summed n at a time, the offset counted once: the mean above the offset is n times a frame's."""
    raw = _frames(10.0, 21).astype(np.float32)
    sums = summed_frames(raw, 7, 100.0)
    assert sums.shape == (3, 64, 64)
    assert float(sums.mean() - 100.0) == pytest.approx(7 * float(raw.mean() - 100.0), rel=1e-4)
    ref = np.full((64, 64), 150.0, np.float32)
    assert np.allclose(summed_frames(ref, 7, 100.0), 100.0 + 7 * 50.0)


def test_too_few_frames_for_sums_leave_one_network(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw, _ = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 3)
    with caplog.at_level(logging.WARNING, logger="n2n.trainer"):
        run, card = train_tiny(tmp_path, raw, data={**ROBUST, "frames": 3})
    assert card.bright_expert is None and not (run / "bright").exists()
    assert "no bright network" in caplog.text


@pytest.mark.parametrize("band", [[1.0, 16.0], [8.0, 4.0]])
def test_a_band_not_above_the_training_light_is_refused(band: list[float]) -> None:
    with pytest.raises(ValueError, match=r"1.5 <= low <= high"):
        TrainConfig.model_validate(tiny_train_dict(data={**ROBUST, "bright_expert": {"band": band}}))


def test_a_preset_trained_otherwise_says_it_makes_one_network(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A preset's bright network with a mean/std normalisation (or --target supervised): one network, and the log
    says why, rather than a refusal of the documented commands."""
    raw, _ = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 24)
    with caplog.at_level(logging.WARNING, logger="n2n.trainer"):
        run, card = train_tiny(tmp_path, raw, data={**ROBUST, "normalization": "meanstd"})
    assert card.bright_expert is None and not (run / "bright").exists()
    assert "no bright network: it needs mode n2n and data.normalization anscombe" in caplog.text


def test_a_card_cannot_point_the_bright_network_out_of_its_folder(bright_run: Path, tmp_path: Path) -> None:
    """A downloaded model folder never makes the Denoiser load files from elsewhere."""
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bright_run, copy)
    card = json.loads((copy / "model.json").read_text())
    card["bright_expert"]["path"] = "../elsewhere"
    (copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match="plain name inside the model folder"):
        ModelCard.load(copy)


def test_a_live_fine_tuned_candidate_keeps_the_bright_network(bright_run: Path, tmp_path: Path) -> None:
    """``n2n serve --finetune`` trains the first network on; its candidates keep the bright network as it was, so
    a swap to one serves bright frames as before (a card naming a folder it lacks would not load)."""
    from trainer.live import Tuner

    tuner = Tuner(bright_run, {"threads": 1, "learning_rate": 1e-4})
    out = tuner.save(tmp_path / "candidate", {"pairs": 0})
    card = ModelCard.load(out)
    assert card.bright_expert == ModelCard.load(bright_run).bright_expert
    served = Denoiser.from_model_dir(out, engine="onnxruntime", precision="fp32")
    original = Denoiser.from_model_dir(bright_run / "bright", engine="onnxruntime", precision="fp32")
    try:
        lit = _frames(100.0)[0]
        assert np.array_equal(served(lit), original(lit)) and served.routed == 1
    finally:
        served.close()
        original.close()


def test_a_time_budget_is_shared_by_the_two_networks() -> None:
    """``n2n train --minutes M`` with a bright network: M in all, the bright network its epochs_share of it."""
    from trainer.bright import _bright_config, main_config

    cfg = TrainConfig.model_validate(tiny_train_dict(data=ROBUST, optim={"max_minutes": 6.0, "epochs": 10}))
    first, bright = main_config(cfg), _bright_config(cfg, 5)
    assert first.optim.max_minutes == pytest.approx(4.0) and bright.optim.max_minutes == pytest.approx(2.0)
    assert (bright.optim.epochs, bright.optim.early_stopping_patience) == (5, 5)
    assert bright.data.exposure_augment == [3.0, 16.0] and bright.data.exposure_augment_share == 1.0
    assert bright.data.bright_expert is None and first.model == bright.model == cfg.model
    unbudgeted = TrainConfig.model_validate(tiny_train_dict(data=ROBUST))
    assert main_config(unbudgeted) is unbudgeted


def test_evaluate_scores_what_denoise_writes_with_a_bright_network(bright_run: Path, tmp_path: Path) -> None:
    """A recording whose exposure changed half-way (bright first): n2n denoise and n2n evaluate (defaults) route the
    same frames to the bright network, so evaluate scores exactly the pixels denoise writes, and says how many went
    there."""
    import subprocess
    import sys

    import tifffile
    from conftest import write_tiff

    from trainer.evaluate import evaluate
    from trainer.metrics import data_range_of, psnr

    dim, dim_truth = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=5), 2)
    lit, lit_truth = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=100.0, seed=5), 2)
    # bright first: the job's record of the first network's precision is made on a frame it does not serve
    raw, truth = np.concatenate([lit, dim]), np.concatenate([lit_truth, dim_truth])
    out = tmp_path / "den.ome.tif"
    subprocess.run([sys.executable, "-m", "n2n", "denoise", str(write_tiff(tmp_path / "raw.ome.tif", raw)),
                    "--model", str(bright_run), "--out", str(out)], check=True, capture_output=True, timeout=300)
    written = tifffile.imread(out)
    report, den = evaluate(bright_run, raw, truth)
    rng = data_range_of(truth)
    assert report["psnr_denoised"] == pytest.approx(
        float(np.mean([psnr(d.astype(np.float32), t, rng) for d, t in zip(written, truth)])), abs=0.01)
    np.testing.assert_array_equal(den, written.astype(np.float32))
    assert report["bright_frames"] == 2


def test_the_bright_network_always_serves_in_float32(bright_run: Path) -> None:
    """At the light it serves, bf16 cost the bright network 0.08-0.17 dB against float32 (docs/results.md): it runs
    in float32 whatever the first network's precision, so a bright frame comes out the same live, offline, resumed
    or swapped (those pass a decided precision on)."""
    for precision in ("auto", "bf16"):
        den = Denoiser.from_model_dir(bright_run, engine="openvino", precision=precision)
        try:
            assert den.engine.requested_precision == precision
            assert den.bright is not None and den.bright.engine.requested_precision == "fp32"
        finally:
            den.close()


def test_a_bright_frame_first_still_prepares_the_first_network(bright_run: Path) -> None:
    """The first frame of a recording may be a bright one: the first network is compiled (its precision decided,
    the shape recorded) all the same, so a job's record of it holds for the dim frames that follow."""
    den = Denoiser.from_model_dir(bright_run, engine="openvino")
    try:
        lit = _frames(100.0)[0]
        den(lit)
        assert den.routed == 1 and den.engine.precision_decided and den.shapes == [lit.shape]
        decided = den.engine.precision
        den(_frames(10.0)[0])
        assert den.engine.precision == decided and den.routed == 1
    finally:
        den.close()


@pytest.mark.parametrize("how", ["outside", "nested"])
def test_a_bright_folder_out_of_the_model_or_with_its_own_is_refused(bright_run: Path, tmp_path: Path,
                                                                       how: str) -> None:
    """A bright folder linked out of the model folder (cards name files inside it only), or a bright network naming
    one of its own (a loop), is refused in one line before anything runs."""
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bright_run, copy)
    if how == "outside":
        shutil.move(copy / "bright", tmp_path / "elsewhere")
        (copy / "bright").symlink_to(tmp_path / "elsewhere")
        words = "inside the model folder"
    else:
        card = json.loads((copy / "bright" / "model.json").read_text())
        card["bright_expert"] = json.loads((copy / "model.json").read_text())["bright_expert"]
        (copy / "bright" / "model.json").write_text(json.dumps(card))
        words = "names no bright network of its own"
    with pytest.raises(CardError, match=words):
        Denoiser.from_model_dir(copy, engine="onnxruntime", precision="fp32")


def test_ctrl_c_while_the_bright_network_trains_keeps_the_first_and_resume_makes_it(tmp_path: Path) -> None:
    """SIGINT during the bright network's epochs: exit 130, the finished first network serves (no bright network
    half made), and the printed --resume command makes the bright network."""
    import os
    import subprocess
    import sys

    import yaml
    from conftest import write_tiff
    from waiting import GENEROUS_S, ctrl_c_when

    raw, _ = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 24)
    data = write_tiff(tmp_path / "raw.ome.tif", raw)
    cfg = tiny_train_dict(data={**ROBUST, "bright_expert": {"band": [3.0, 16.0], "epochs_share": 1.0}},
                          optim={"epochs": 2, "steps_per_epoch": 5})
    cfg["data"].pop("frames")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    env = {**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "n2n", "train", "--config", str(config), "--data", str(data), "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--set", "optim.steps_per_epoch=400"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    err = ctrl_c_when(proc, lambda: (out / "bright" / "checkpoint.pt").exists(), "the bright network's first epoch")
    assert proc.returncode == 130, err[-2000:]
    assert "first network is finished" in err and "--resume" in err
    assert not (out / "bright").exists() and ModelCard.load(out).bright_expert is None
    import shlex

    printed = shlex.split(err[err.index("n2n train --resume"):].splitlines()[0])  # the way on, as printed
    again = subprocess.run([sys.executable, "-m", *printed], capture_output=True, text=True, env=env,
                           timeout=GENEROUS_S)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ModelCard.load(out).bright_expert is not None and (out / "bright" / "model.json").is_file()
