"""The simulated fluorescence camera: reproducibility, noise model, photon transfer, drift, bleaching."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from streamer.sources import FrameSource, SimulatedCamera, SimulatedCameraConfig, grab, simulate_stack
from trainer.metrics import psnr

SMALL = {"height": 48, "width": 64}


def test_same_seed_same_frames() -> None:
    """Two cameras with the same seed produce identical frames and truth."""
    cfg = SimulatedCameraConfig(**SMALL, seed=11)

    raw_a, truth_a = simulate_stack(cfg, 4)
    raw_b, truth_b = simulate_stack(cfg, 4)

    np.testing.assert_array_equal(raw_a, raw_b)
    np.testing.assert_array_equal(truth_a, truth_b)


def test_different_seed_different_frames() -> None:
    """A different seed changes both the sample and the noise."""
    raw_a, truth_a = simulate_stack(SimulatedCameraConfig(**SMALL, seed=1), 2)
    raw_b, truth_b = simulate_stack(SimulatedCameraConfig(**SMALL, seed=2), 2)

    assert not np.array_equal(raw_a, raw_b)
    assert not np.array_equal(truth_a, truth_b)


def test_consecutive_frames_have_independent_noise() -> None:
    """Consecutive frames of a still sample differ (fresh noise each frame) but share the truth."""
    raw, truth = simulate_stack(SimulatedCameraConfig(**SMALL), 2)

    assert not np.array_equal(raw[0], raw[1])
    np.testing.assert_array_equal(truth[0], truth[1])


def test_frames_are_uint16_with_configured_shape() -> None:
    """read() gives uint16 frames of (height, width); the camera satisfies the FrameSource protocol."""
    cam = SimulatedCamera(SimulatedCameraConfig(height=40, width=24))

    frame = cam.read()

    assert isinstance(cam, FrameSource)
    assert frame.pixels.dtype == np.uint16
    assert frame.pixels.shape == (40, 24) == cam.shape
    assert cam.dtype == np.uint16
    assert frame.index == 0 and cam.read().index == 1
    assert frame.metadata["camera"] == "simulated"


def test_expected_is_the_mean_of_many_frames() -> None:
    """The mean of many frames approaches expected() within the shot+read noise standard error."""
    cfg = SimulatedCameraConfig(**SMALL, exposure_ms=20.0, seed=4)
    cam = SimulatedCamera(cfg)
    n = 200

    frames = grab(cam, n).astype(np.float64)
    mean = frames.mean(axis=0)
    truth = cam.expected(0).astype(np.float64)

    # per-pixel variance from the photon-transfer relation, plus quantisation
    var = (truth - cfg.offset_adu) / cfg.gain_e_per_adu + (cfg.read_noise_e / cfg.gain_e_per_adu) ** 2 + 1 / 12
    z = (mean - truth) / np.sqrt(var / n)
    assert abs(z.mean()) < 0.1  # no bias
    assert 0.8 < z.std() < 1.2  # deviations match the predicted noise
    assert np.abs(z).max() < 6


def test_longer_exposure_raises_snr() -> None:
    """PSNR of a frame against its truth grows with exposure time (more photons)."""
    scores = []
    for exposure in (1.0, 10.0, 100.0):
        cam = SimulatedCamera(SimulatedCameraConfig(**SMALL, exposure_ms=exposure))
        truth = cam.expected(0)
        frame = cam.read().pixels
        scores.append(psnr(frame, truth, float(truth.max() - truth.min())))

    assert scores[0] + 5 < scores[1] < scores[2] - 5, scores


def _ptc_gain(gain: float, read_noise: float) -> float:
    """Estimate the conversion gain (e⁻/ADU) from a photon-transfer curve of flat frames."""
    means, variances = [], []
    for exposure in (250.0, 500.0, 1000.0, 2000.0, 4000.0):
        cfg = SimulatedCameraConfig(height=128, width=128, sample="flat", exposure_ms=exposure,
                                    read_noise_e=read_noise, gain_e_per_adu=gain, offset_adu=100.0, seed=5)
        cam = SimulatedCamera(cfg)
        a, b = (cam.read().pixels.astype(np.float64) for _ in range(2))
        assert a.max() < 2**16 - 1, "PTC level clipped"
        means.append((a.mean() + b.mean()) / 2 - cfg.offset_adu)
        variances.append(np.var((a - b) / np.sqrt(2)))
    slope, _ = np.polyfit(means, variances, 1)
    return 1.0 / slope


@pytest.mark.parametrize("gain", [0.5, 2.0])
def test_photon_transfer_curve_recovers_gain(gain: float) -> None:
    """The slope of variance vs mean over flat frames is 1/gain, within 5%."""
    estimated = _ptc_gain(gain, read_noise=3.0)

    assert estimated == pytest.approx(gain, rel=0.05)


def test_photon_transfer_intercept_is_read_noise() -> None:
    """At a level with no photons the flat-frame variance is (read_noise/gain)² (+ quantisation)."""
    cfg = SimulatedCameraConfig(height=128, width=128, sample="flat", exposure_ms=1e-6,
                                read_noise_e=8.0, gain_e_per_adu=0.5, background_photon_rate=0.0)
    cam = SimulatedCamera(cfg)

    a, b = (cam.read().pixels.astype(np.float64) for _ in range(2))

    assert np.var((a - b) / np.sqrt(2)) == pytest.approx((8.0 / 0.5) ** 2 + 1 / 12, rel=0.05)


def test_saturated_frames_clip_to_adc_max() -> None:
    """Bright light on an 8-bit camera clips at 255 instead of wrapping around."""
    cfg = SimulatedCameraConfig(**SMALL, sample="flat", bit_depth=8, exposure_ms=1000.0, offset_adu=10)
    cam = SimulatedCamera(cfg)

    frame = cam.read().pixels

    assert cam.expected(0).min() > 255  # the light alone would exceed the ADC range
    assert frame.dtype == np.uint16
    assert frame.max() == 255 and frame.min() == 255


def test_partial_saturation_clips_only_bright_pixels() -> None:
    """On a structured sample only the brightest pixels hit 2**bit_depth - 1."""
    cfg = SimulatedCameraConfig(**SMALL, bit_depth=10, exposure_ms=400.0, gain_e_per_adu=1.0)
    cam = SimulatedCamera(cfg)
    truth = cam.expected(0)

    frame = cam.read().pixels

    assert frame.max() == 1023
    assert (frame == 1023).any() and (frame < 1023).any()
    assert np.all(frame[truth > 1200] == 1023)


def test_drift_moves_the_sample() -> None:
    """With drift (dy, dx) per frame, frame 10's truth is frame 0's shifted by 10·(dy, dx)."""
    cfg = SimulatedCameraConfig(height=64, width=64, drift_px_per_frame=(0.5, -0.3), seed=2)
    cam = SimulatedCamera(cfg)

    t0, t10 = cam.expected(0), cam.expected(10)

    assert not np.allclose(t0, t10)
    # shift of (5, -3) px: out[y, x] = in[y - 5, x + 3]
    np.testing.assert_allclose(t10[5:, :-3], t0[:-5, 3:], rtol=1e-4, atol=1e-3)


def test_still_sample_does_not_move() -> None:
    """Without drift or bleaching the truth is the same for every frame."""
    cam = SimulatedCamera(SimulatedCameraConfig(**SMALL))

    np.testing.assert_array_equal(cam.expected(0), cam.expected(25))


def test_bleaching_lowers_the_mean() -> None:
    """With a bleaching half-life, the signal above background halves every half-life."""
    cfg = SimulatedCameraConfig(**SMALL, exposure_ms=10.0, bleach_half_life_s=0.1,
                                dark_current=0.0, read_noise_e=0.0)
    cam = SimulatedCamera(cfg)
    raw = grab(cam, 21)
    base = cfg.offset_adu + cfg.quantum_efficiency * cfg.background_photon_rate * 0.01 / cfg.gain_e_per_adu

    means = raw.reshape(21, -1).mean(axis=1)
    signal = [cam.expected(i).mean() - base for i in (0, 10, 20)]

    assert means[20] < means[10] < means[0]
    assert np.all(np.diff(means[::5]) < 0)
    assert signal[1] / signal[0] == pytest.approx(0.5, rel=1e-3)
    assert signal[2] / signal[0] == pytest.approx(0.25, rel=1e-3)


def test_grab_rejects_zero_frames() -> None:
    """grab() needs at least one frame."""
    with pytest.raises(ValueError, match="at least 1 frame"):
        grab(SimulatedCamera(SimulatedCameraConfig(**SMALL)), 0)


@pytest.mark.parametrize(
    "kwargs", [{"offset_adu": 65535}, {"offset_adu": 70000}, {"bit_depth": 12, "offset_adu": 4095}]
)
def test_offset_at_or_above_adc_max_rejected(kwargs: dict) -> None:
    """The config refuses an offset that leaves no room in the ADC range."""
    with pytest.raises(ValidationError, match="ADC maximum"):
        SimulatedCameraConfig(**kwargs)


def test_negative_fps_rejected() -> None:
    """A negative frame rate is refused."""
    with pytest.raises(ValueError, match="fps"):
        SimulatedCamera(SimulatedCameraConfig(**SMALL), fps=-1)
