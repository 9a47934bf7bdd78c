"""Evaluation against a reference: metrics, baselines, figure, and shape checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from streamer.sources import read_stack
from trainer.config import EvaluateConfig
from trainer.evaluate import evaluate, save_figure
from trainer.inference import TrainedModel, load_run
from trainer.metrics import data_range_of, psnr, ssim

REPORT_KEYS = ["psnr_raw", "psnr_denoised", "ssim_raw", "ssim_denoised", "psnr_gaussian", "ssim_gaussian",
               "gaussian_sigma", "psnr_average2", "ssim_average2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model(trained_run: dict[str, Path]) -> TrainedModel:
    """The session's tiny trained run, loaded."""
    return load_run(trained_run["run"])


@pytest.fixture(scope="module")
def data(trained_run: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """The run's simulated raw frames (uint16) and truth (float32)."""
    return read_stack(trained_run["raw"]), read_stack(trained_run["truth"])


@pytest.fixture(scope="module")
def result(model: TrainedModel, data) -> tuple[dict, np.ndarray]:
    """evaluate() on the simulated stack with a short Gaussian sigma search, at fp32 (the model itself: the
    default, auto, scores what n2n serve runs here; tests/test_precision_choice.py checks that)."""
    cfg = EvaluateConfig(gaussian_sigmas=[0.5, 1.0, 2.0, 4.0], device="cpu", precision="fp32")
    return evaluate(model, data[0], data[1], cfg)


def test_report_has_finite_metrics(result) -> None:
    """The report holds every headline metric, all finite; SSIM within [-1, 1]."""
    report, _ = result

    for key in REPORT_KEYS:
        assert key in report, key
        assert isinstance(report[key], float) and math.isfinite(report[key]), key
    for key in ("ssim_raw", "ssim_denoised", "ssim_gaussian", "ssim_average2"):
        assert -1 <= report[key] <= 1
    assert report["frames"] == 6 and report["shape"] == [64, 64]
    assert report["gain_db_over_raw"] == pytest.approx(report["psnr_denoised"] - report["psnr_raw"])
    assert len(report["per_frame"]["psnr_denoised"]) == 6


def test_metrics_match_independent_computation(result, data) -> None:
    """psnr_raw, psnr_average2 and the data range equal values computed here from the arrays."""
    report, _ = result
    raw, truth = data
    rng = float(truth.max() - truth.min())
    raw64 = raw.astype(np.float64)

    want_raw = np.mean([10 * np.log10(rng**2 / np.mean((raw64[t] - truth[t]) ** 2)) for t in range(6)])
    avg2 = [(raw64[t] + raw64[t + 1]) / 2 for t in range(5)]
    want_avg2 = np.mean([10 * np.log10(rng**2 / np.mean((avg2[t] - truth[t]) ** 2)) for t in range(5)])

    assert report["data_range"] == pytest.approx(rng)
    assert report["psnr_raw"] == pytest.approx(want_raw, rel=1e-6)
    assert report["psnr_average2"] == pytest.approx(want_avg2, rel=1e-6)
    assert report["psnr_average2"] > report["psnr_raw"] + 2  # averaging two frames helps ~3 dB


def test_denoised_stack_is_returned(result, data) -> None:
    """The returned stack has the raw shape, float32, and scores as reported."""
    report, den = result
    raw, truth = data

    assert den.shape == raw.shape and den.dtype == np.float32
    assert report["psnr_denoised"] == pytest.approx(
        np.mean([psnr(den[t], truth[t], report["data_range"]) for t in range(6)]))


def test_gaussian_sigma_is_best_of_search(result, data) -> None:
    """The reported sigma has the highest PSNR of the search, recomputed here on the probe frames."""
    report, _ = result
    raw, truth = data
    search = {float(k): v for k, v in report["gaussian_sigma_search"].items()}

    assert set(search) == {0.5, 1.0, 2.0, 4.0}
    assert report["gaussian_sigma"] == max(search, key=search.get)
    rng = report["data_range"]
    mine = {s: np.mean([psnr(ndimage.gaussian_filter(raw[t].astype(np.float32), s), truth[t], rng)
                        for t in range(5)]) for s in search}
    assert max(mine, key=mine.get) == report["gaussian_sigma"]
    assert report["psnr_gaussian"] > report["psnr_raw"]


def test_max_frames_and_2d_reference(model: TrainedModel, data) -> None:
    """max_frames limits the frames; a single (H, W) reference scores every frame; average4 needs 4."""
    raw, truth = data

    report, den = evaluate(model, raw, truth[0], EvaluateConfig(max_frames=3, gaussian_sigmas=[1.0], device="cpu"))

    assert report["frames"] == 3 and den.shape == (3, 64, 64)
    assert report["psnr_average4"] is None and report["ssim_average4"] is None
    assert math.isfinite(report["psnr_average2"])


def test_progress_callback(model: TrainedModel, data) -> None:
    """The progress callback sees every frame done, ending at (n, n)."""
    raw, truth = data
    calls: list[tuple[int, int]] = []

    evaluate(model, raw[:5], truth[:5], EvaluateConfig(batch_size=2, gaussian_sigmas=[1.0], device="cpu"),
             progress=lambda done, total: calls.append((done, total)))

    assert calls == [(2, 5), (4, 5), (5, 5)]


@pytest.mark.parametrize(
    "reference_shape",
    [(64, 32), (5, 64, 64), (6, 32, 64), (1, 6, 64, 64)],
    ids=["2d-wrong-size", "3d-wrong-count", "3d-wrong-size", "4d"],
)
def test_reference_shape_mismatch(model: TrainedModel, data, reference_shape: tuple[int, ...]) -> None:
    """A reference that does not match the frames raises ValueError naming the expected shapes."""
    raw, _ = data

    with pytest.raises(ValueError, match=r"Expected a reference of shape \(64, 64\) or \(6, 64, 64\)"):
        evaluate(model, raw, np.ones(reference_shape, np.float32))


def test_raw_must_be_a_stack(model: TrainedModel, data) -> None:
    """A single 2-D raw frame raises ValueError asking for a (T, H, W) stack."""
    raw, truth = data

    with pytest.raises(ValueError, match=r"\(T, H, W\) stack"):
        evaluate(model, raw[0], truth[0])


def test_figure_is_a_png(tmp_path: Path, result, data) -> None:
    """save_figure writes a real PNG image of non-trivial size."""
    report, den = result
    raw, truth = data
    path = tmp_path / "fig.png"

    out = save_figure(path, raw[0], den[0], truth[0], report)

    assert out == path
    blob = path.read_bytes()
    assert blob[:8] == PNG_MAGIC
    assert len(blob) > 20_000


def test_figure_of_smallest_accepted_frames(tmp_path: Path) -> None:
    """save_figure handles the smallest frames read_stack accepts (8×8)."""
    img = np.random.default_rng(0).random((8, 8)).astype(np.float32)

    save_figure(tmp_path / "small.png", img, img, img)

    assert (tmp_path / "small.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(("dtype", "expected"), [(np.uint8, 255.0), (np.uint16, 65535.0), (np.int16, 32767.0)])
def test_data_range_of_integer_references(dtype: type, expected: float) -> None:
    """Integer references use their dtype's range (FMD convention: 255 for uint8)."""
    assert data_range_of(np.array([[3, 4]], dtype=dtype)) == expected


def test_data_range_of_float_reference() -> None:
    """Float references use max − min; a constant one raises ValueError."""
    assert data_range_of(np.array([[1.5, 4.0]], np.float32)) == 2.5
    with pytest.raises(ValueError, match="constant"):
        data_range_of(np.ones((4, 4), np.float32))


def test_psnr_and_ssim_basics() -> None:
    """PSNR is inf for identical images and 20·log10(range/rmse) otherwise; SSIM of identical is 1."""
    ref = np.random.default_rng(0).random((32, 32))

    assert psnr(ref, ref, 1.0) == float("inf")
    assert psnr(ref + 0.1, ref, 1.0) == pytest.approx(20.0)
    assert ssim(ref, ref, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="matching shapes"):
        psnr(ref, ref[:8], 1.0)


def test_offline_and_served_frames_are_identical(model: TrainedModel, data, result) -> None:
    """The frames evaluate() scores are the frames `n2n serve` sends for the same input (one Denoiser, one
    normalisation, one engine, the camera's dtype), and they are the trained network's output in the trainer's
    units, rounded to the camera's integers."""
    import torch

    from streamer.client import StreamClient
    from streamer.endpoints import Endpoints
    from streamer.server import ServeConfig, running_server

    raw, _ = data
    _, offline = result
    cfg = ServeConfig(engine="auto", precision="fp32", num_threads=1, endpoints=Endpoints.local())
    with running_server(model.run_dir, cfg) as server, StreamClient(server.endpoints) as client:
        served = np.stack([client.request(frame).pixels for frame in raw])

    assert served.dtype == raw.dtype
    np.testing.assert_array_equal(served.astype(np.float32), offline)
    norm = model.normalization  # the trainer's, from model.pt, not the card the server read
    with torch.no_grad():
        x = torch.from_numpy(norm.normalize(raw)[:, None])
        trained = norm.denormalize(model.net.eval()(x)[:, 0].numpy())
    np.testing.assert_allclose(served, np.clip(trained, 0, np.iinfo(raw.dtype).max), rtol=0,
                               atol=0.5 + 1e-3 * float(np.abs(trained).max()))


def test_without_a_reference_the_estimate_agrees_with_the_reference(model: TrainedModel, data, result) -> None:
    """The Noise2Noise estimate of the gain over raw (consecutive frames, no reference) is the gain the reference
    measures, within 1 dB on the simulated stack, scored on the same served model."""
    from trainer.evaluate import evaluate_without_reference

    cfg = EvaluateConfig(device="cpu", precision="fp32")
    report, first = evaluate_without_reference(model, data[0], cfg)

    measured = result[0]["psnr_denoised"] - result[0]["psnr_raw"]
    assert report["reference"] is None and report["pairs"] == data[0].shape[0] - 1
    assert abs(report["estimated_gain_db"] - measured) < 1.0
    assert first.shape == data[0].shape[1:] and first.dtype == data[0].dtype


def test_without_a_reference_one_frame_is_refused(model: TrainedModel, data) -> None:
    """One frame has no pair to estimate the noise from: a ValueError that says so."""
    from trainer.evaluate import evaluate_without_reference

    with pytest.raises(ValueError, match="two or more frames"):
        evaluate_without_reference(model, data[0][:1], EvaluateConfig(device="cpu", precision="fp32"))


def test_a_reference_on_another_scale_is_warned_about(data) -> None:
    """A uint16-scaled reference of uint8-scaled data (another bit depth) is named; the right one is not."""
    from trainer.evaluate import reference_warning

    raw, truth = data
    assert reference_warning(raw, truth) is None
    warning = reference_warning((raw // 256).astype(np.uint8) + 1, truth)
    assert warning is not None and "another scale" in warning
    # a stretched copy whose mean agrees by chance (the newcomer's 8-bit reference of 16-bit frames): its contrast
    mean = float(np.mean(raw))
    stretched = (truth - truth.mean()) * 3 + mean
    warning = reference_warning(raw, stretched)
    assert warning is not None and "contrast is" in warning and "another scale" in warning
    warning = reference_warning(raw, np.clip(truth, 0, 255).astype(np.uint8))  # an 8-bit copy of 16-bit frames
    assert warning is not None and "uint8" in warning and "uint16" in warning
