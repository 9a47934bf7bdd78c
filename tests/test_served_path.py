"""What is served is what was checked (issue 30): the camera's noise model, the bias-free network, INT8 calibrated
and checked over a range of exposures with a float32 path for frames outside it, and the output check that returns
the raw frame rather than a broken one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import train_tiny, write_tiff

from streamer.core.card import ModelCard, Normalization
from streamer.core.noise import estimate_noise_model
from streamer.denoiser import FLAG_FLOAT_PATH, FLAG_RAW_OUTPUT, Denoiser, is_raw
from streamer.sources import SimulatedCameraConfig, simulate_stack
from trainer.unet import UNet

CAMERA = SimulatedCameraConfig(height=96, width=96, exposure_ms=10.0, seed=5)  # gain 2 ADU/e-, offset 100, read 3.2


def test_noise_model_estimated_from_consecutive_frames() -> None:
    """Photon transfer on 20 frames of the simulated camera finds its gain (ADU per electron) and read noise."""
    raw, _ = simulate_stack(CAMERA.model_copy(update={"height": 192, "width": 192}), 20)
    est = estimate_noise_model([raw])
    truth_gain = 1 / CAMERA.gain_e_per_adu
    truth_read = CAMERA.read_noise_e / CAMERA.gain_e_per_adu
    assert est["gain"] == pytest.approx(truth_gain, rel=0.1)
    assert est["offset"] == pytest.approx(CAMERA.offset_adu, abs=2)
    assert est["read_noise"] == pytest.approx(truth_read, rel=0.4)


@pytest.mark.parametrize("exposure_ms", [3.0, 100.0])
def test_offset_is_where_no_light_falls_not_the_darkest_pixels(exposure_ms: float) -> None:
    """The darkest pixels of a fluorescence frame hold background light (at 100 ms the simulated camera's lie ~30 ADU
    above its offset): the offset comes from their photon noise's skew, so dim and bright recordings give the same
    camera, and pairs remade at other exposures (thinned, summed) keep their dark level."""
    raw, truth = simulate_stack(CAMERA.model_copy(update={"height": 192, "width": 192, "exposure_ms": exposure_ms}),
                                40)
    est = estimate_noise_model([raw])
    darkest = float(np.quantile(truth[0], 0.001))
    assert est["offset"] == pytest.approx(CAMERA.offset_adu, abs=2)
    assert est["read_noise"] == pytest.approx(CAMERA.read_noise_e / CAMERA.gain_e_per_adu, rel=0.4)
    if exposure_ms == 100.0:
        assert darkest > CAMERA.offset_adu + 20  # the old rule (the darkest pixels' level) was 20+ ADU off here


def test_offset_without_read_noise_stays_where_the_variance_line_allows() -> None:
    """A camera without read noise (FMD's confocal: 8 bits, photon counting) whose darkest pixels see light: the
    offset is never put below the lowest the photon-transfer line allows (the read noise would be imaginary)."""
    rng = np.random.default_rng(3)
    light = 0.5 + 20 * rng.random((128, 128))
    frames = (4.0 * rng.poisson(light, (40, 128, 128)) + 3.0).astype(np.float32)  # gain 4, offset 3, no read noise
    est = estimate_noise_model([frames])
    assert est["gain"] == pytest.approx(4.0, rel=0.1)
    assert est["offset"] == pytest.approx(3.0, abs=1.0)
    assert est["read_noise"] == pytest.approx(0.0, abs=1.0)


def test_offset_holds_while_the_light_fades() -> None:
    """Bleaching (here the whole field, background included, fading to 1/e over the frames) changes each pixel's
    level slowly: the skew is taken from each pixel's frame-to-frame noise, not from its spread about its mean."""
    rng = np.random.default_rng(4)
    light = 2.0 + 30 * rng.random((128, 128))
    fade = np.exp(-np.linspace(0, 1, 60))[:, None, None]
    frames = 2.0 * rng.poisson(light * fade) + rng.normal(100.0, 3.2, (60, 128, 128))  # gain 2, offset 100, read 3.2
    est = estimate_noise_model([frames.astype(np.float32)])
    assert est["offset"] == pytest.approx(100.0, abs=1.5)
    assert est["read_noise"] == pytest.approx(3.2, rel=0.4)


def test_anscombe_stabilises_noise_and_inverts_without_bias() -> None:
    """In the stabilised space the noise has one variance at every brightness, and the inverse of the mean of
    stabilised frames is the camera's mean (the unbiased inverse), at 3 and 100 ms alike."""
    raw10, _ = simulate_stack(CAMERA, 8)
    norm = Normalization.fit_anscombe([raw10])
    stds = []
    for ms in (3.0, 100.0):
        raw, truth = simulate_stack(CAMERA.model_copy(update={"exposure_ms": ms}), 40)
        z = np.stack([norm.normalize(f) for f in raw]) * norm.std
        stds.append(float(z.std(axis=0).mean()))
        back = norm.denormalize(z.mean(axis=0) / norm.std)
        assert abs(float(back.mean() - truth[0].mean())) < 0.02 * float(truth[0].mean() - CAMERA.offset_adu) + 0.5
    assert stds == pytest.approx([1.0, 1.0], abs=0.12)


def test_given_noise_model_is_kept() -> None:
    raw, _ = simulate_stack(CAMERA, 4)
    norm = Normalization.fit_anscombe([raw], gain=2.0, offset=100.0, read_noise=3.2)
    assert (norm.gain, norm.offset, norm.read_noise, norm.source) == (2.0, 100.0, 3.2, "given")
    assert Normalization.from_dict(norm.to_dict()) == norm


def test_noise_model_refuses_frames_without_shot_noise() -> None:
    rng = np.random.default_rng(0)
    flat = (rng.normal(100, 3, (6, 64, 64)) + np.linspace(0, 500, 64)[None, None]).astype(np.float32)
    with pytest.raises(ValueError, match="does not grow with brightness"):
        estimate_noise_model([flat])


def test_bias_free_network_scales_with_its_input() -> None:
    torch.manual_seed(0)
    net = UNet(depth=2, filters=[4, 8, 16], bias=False, input_frames=2, frame_stem=2, residual_frames="mix").eval()
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(3.5 * x), 3.5 * net(x), rtol=1e-4, atol=1e-5)
    assert net.architecture["bias"] is False
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny exposure-robust run (anscombe, bias-free) with its INT8 export, trained at 10 ms."""
    raw, truth = simulate_stack(CAMERA, 8)
    run, card = train_tiny(tmp_path_factory.mktemp("robust"), raw, truth,
                           model={"depth": 2, "base_filters": 8, "bias": False},
                           data={"normalization": "anscombe", "patch_size": 32, "val_pairs": 2},
                           optim={"epochs": 2, "steps_per_epoch": 20},
                           quantize={"int8": True, "calibration_patches": 10, "max_loss_db": 3.0})
    return {"run": run, "card": card}


def test_card_records_the_noise_model_and_the_checked_range(robust_run: dict[str, Any]) -> None:
    card: ModelCard = robust_run["card"]
    assert card.normalization.kind == "anscombe" and card.architecture.bias is False
    assert card.quantization is not None and card.quantization.status == "kept", card.quantization
    cal = card.quantization.calibration
    assert cal["exposure_scales"] == [1.0, 2.0]
    lo, hi = cal["checked_range"]
    peak_lo, peak_hi = cal["checked_peak"]
    assert lo < peak_lo < peak_hi < hi
    assert set(card.quantization.check["loss_db_by_exposure_scale"]) == {"1", "2"}


def test_frames_outside_the_checked_range_take_the_float_path(robust_run: dict[str, Any]) -> None:
    """A frame 50x brighter than any training frame is served by float32 (flagged, counted), never by a clipped
    INT8 model: its pixels equal a float32 Denoiser's; a frame in range is served by INT8 unflagged."""
    int8 = Denoiser.from_model_dir(robust_run["run"], engine="openvino", precision="int8")
    fp32 = Denoiser.from_model_dir(robust_run["run"], engine="openvino", precision="fp32")
    dim = simulate_stack(CAMERA, 8)[0][5:]  # a frame of the field it was trained and checked on
    bright, _ = simulate_stack(CAMERA.model_copy(update={"exposure_ms": 500.0}), 1)
    dimmer, _ = simulate_stack(CAMERA.model_copy(update={"exposure_ms": 1.0}), 1)
    brighter, _ = simulate_stack(CAMERA.model_copy(update={"exposure_ms": 40.0}), 1)
    int8(dim[0])
    assert int8.engine.precision == "int8" and int8.guarded
    assert int8.last_flags == [()]
    assert int8.in_checked_range(dim[0]) and not int8.in_checked_range(bright[0])
    assert not int8.in_checked_range(dimmer[0])  # a tenth of the light: dimmer than any frame INT8 was checked on
    # 4x the light: brighter than INT8 was checked on (1-2x), though its pixels may stay inside the checked values
    assert not int8.in_checked_range(brighter[0])
    out = int8(bright[0])
    assert int8.last_flags == [(FLAG_FLOAT_PATH,)]
    # the float32 model's pixels (the fp32 Denoiser converts inside the graph: a count apart where a value is .5)
    assert np.abs(out.astype(np.int64) - fp32(bright[0]).astype(np.int64)).max() <= 1
    outs = int8.batch([dim[0], bright[0], dim[0]])  # (one shape: the batch runs frame by frame, as above)
    assert int8.last_flags == [(), (FLAG_FLOAT_PATH,), ()]
    np.testing.assert_array_equal(outs[1], out)
    assert int8.counts[FLAG_FLOAT_PATH] == 2
    assert fp32.last_flags == [()] and not fp32.guarded


def test_a_tiled_frame_out_of_range_takes_the_float_path_tile_by_tile(robust_run: dict[str, Any]) -> None:
    int8 = Denoiser.from_model_dir(robust_run["run"], engine="openvino", precision="int8", tile_size=72,
                                   max_tiles=2)
    fp32 = Denoiser.from_model_dir(robust_run["run"], engine="openvino", precision="fp32", tile_size=72,
                                   max_tiles=2)
    bright, _ = simulate_stack(CAMERA.model_copy(update={"seed": 9, "exposure_ms": 500.0}), 1)
    out = int8(bright[0])
    assert int8.plan(bright[0].shape).tiled and int8.last_flags == [(FLAG_FLOAT_PATH,)]
    np.testing.assert_array_equal(out, fp32(bright[0]))


def test_an_int8_export_without_a_recorded_range_is_never_trusted(robust_run: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "old"
    shutil.copytree(robust_run["run"], run)
    card = ModelCard.load(run)
    assert card.quantization is not None
    card.quantization = card.quantization.model_copy(update={"calibration": {"frames": "older export"}})
    card.save()
    den = Denoiser.from_model_dir(run, engine="openvino", precision="int8")
    frame, _ = simulate_stack(CAMERA.model_copy(update={"seed": 9}), 1)
    den(frame[0])
    assert den.last_flags == [(FLAG_FLOAT_PATH,)]


def test_an_output_that_departs_from_its_input_is_replaced_by_the_raw_frame(trained_run: dict[str, Path]) -> None:
    """An engine whose output is clipped (as INT8 beyond its calibrated range was: max 198 where the truth reached
    932) gives the raw frame back, flagged raw, counted: never a broken frame called denoised. A good output passes."""
    den = Denoiser.from_model_dir(trained_run["run"], engine="onnxruntime", precision="fp32")
    frame, _ = simulate_stack(SimulatedCameraConfig(height=64, width=64, seed=4, exposure_ms=50.0), 1)
    good = den(frame[0])
    assert den.last_flags == [()] and not is_raw(den.last_flags[0])
    assert not np.array_equal(good, frame[0])
    real = den.engine.infer
    # clipped near the background (the INT8 gave max 198 where the truth reached 932)
    ceiling = np.float32((float(np.percentile(frame[0], 10)) - den.card.mean) / den.card.std)
    den.engine.infer = lambda batch: np.minimum(real(batch), ceiling)  # type: ignore[method-assign]
    out = den(frame[0])
    assert den.last_flags == [(FLAG_RAW_OUTPUT,)] and is_raw(den.last_flags[0])
    np.testing.assert_array_equal(out, frame[0])
    assert den.counts[FLAG_RAW_OUTPUT] == 1
    outs = den.batch([frame[0], frame[0]])
    assert den.last_flags == [(FLAG_RAW_OUTPUT,), (FLAG_RAW_OUTPUT,)] and den.counts[FLAG_RAW_OUTPUT] == 3
    assert all(np.array_equal(o, frame[0]) for o in outs)
    den.check_output = False
    assert not np.array_equal(den(frame[0]), frame[0])


def test_evaluate_scores_the_pixels_denoise_writes(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """n2n evaluate with its defaults scores what n2n denoise with its defaults writes (the same precision, the
    camera's dtype), and two runs of n2n denoise write the same pixels."""
    import subprocess
    import sys

    import tifffile

    from trainer.evaluate import evaluate
    from trainer.metrics import data_range_of, psnr

    raw, truth = simulate_stack(SimulatedCameraConfig(height=64, width=64, seed=6, exposure_ms=3.0), 3)
    src = write_tiff(tmp_path / "raw.ome.tif", raw)
    outs = []
    for i in (1, 2):
        out = tmp_path / f"den{i}.ome.tif"
        subprocess.run([sys.executable, "-m", "n2n", "denoise", str(src), "--model", str(trained_run["run"]),
                        "--out", str(out)], check=True, capture_output=True, timeout=300)
        outs.append(tifffile.imread(out))
    np.testing.assert_array_equal(outs[0], outs[1])
    rng = data_range_of(truth)
    written = float(np.mean([psnr(d.astype(np.float32), t, rng) for d, t in zip(outs[0], truth)]))
    report, den = evaluate(trained_run["run"], raw, truth)
    assert report["psnr_denoised"] == pytest.approx(written, abs=0.01)
    np.testing.assert_array_equal(den, outs[0].astype(np.float32))
