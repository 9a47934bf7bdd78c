"""A physically based simulated fluorescence camera: the embedded default frame source.

Photons → electrons → ADU, following the standard sCMOS/EMCCD-free camera model
(Janesick, *Photon Transfer*, 2007)::

    photons  = flux (photons/s/pixel) × exposure (s)              expected, noise free
    e⁻       = Poisson(QE × photons + dark current × exposure)     shot noise
    e⁻      += Normal(0, read_noise)                               read noise
    ADU      = clip(round(e⁻ / gain + offset), 0, 2**bits - 1)     gain in e⁻/ADU

so the photon-transfer curve is ``var(ADU) = (mean(ADU) - offset) / gain + (read_noise/gain)²``.
The sample is rendered once (puncta, filaments and cell-like blobs, blurred by a Gaussian
PSF) and optionally drifts slowly and photobleaches from frame to frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from ._base import BaseSource

__all__ = ["SimulatedCameraConfig", "SimulatedCamera", "render_sample", "simulate_stack"]


class SimulatedCameraConfig(BaseModel):
    """Camera and sample parameters of the simulated camera."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    height: int = Field(512, ge=8, le=8192)
    """Frame height in pixels."""
    width: int = Field(512, ge=8, le=8192)
    """Frame width in pixels."""
    exposure_ms: float = Field(10.0, gt=0)
    """Exposure time; sets the number of photons, hence the SNR."""
    sample: Literal["cells", "flat"] = "cells"
    """'cells': puncta, filaments and cell bodies; 'flat': uniform field (photon-transfer tests)."""
    peak_photon_rate: float = Field(5000.0, gt=0)
    """Photons per second per pixel at the brightest structures."""
    background_photon_rate: float = Field(200.0, ge=0)
    """Photons per second per pixel of out-of-focus background."""
    quantum_efficiency: float = Field(0.8, gt=0, le=1)
    """Fraction of photons converted to photo-electrons."""
    dark_current: float = Field(0.5, ge=0)
    """Dark current in electrons per pixel per second."""
    read_noise_e: float = Field(1.6, ge=0)
    """Gaussian read noise in electrons (rms)."""
    gain_e_per_adu: float = Field(0.5, gt=0)
    """Conversion gain: electrons per ADU."""
    offset_adu: float = Field(100.0, ge=0)
    """Camera offset (bias) in ADU."""
    bit_depth: int = Field(16, ge=8, le=16)
    """ADC bit depth; values are clipped to [0, 2**bit_depth - 1] and stored as uint16."""
    psf_sigma_px: float = Field(1.2, ge=0)
    """Gaussian PSF standard deviation in pixels."""
    drift_px_per_frame: tuple[float, float] = (0.0, 0.0)
    """Slow sample drift (dy, dx) in pixels per frame; 0 keeps the sample still."""
    bleach_half_life_s: float | None = Field(None, gt=0)
    """Photobleaching half-life in seconds of accumulated exposure; None disables bleaching."""
    seed: int = 0
    """Seed for the sample and the noise: same seed, same frames."""

    @model_validator(mode="after")
    def _check_dynamic_range(self) -> SimulatedCameraConfig:
        if self.offset_adu >= 2**self.bit_depth - 1:
            raise ValueError(
                f"offset_adu ({self.offset_adu}) must be below the ADC maximum "
                f"({2**self.bit_depth - 1} for {self.bit_depth} bits)"
            )
        return self


def _smooth_curve(rng: np.random.Generator, h: int, w: int, steps: int) -> np.ndarray:
    """A random, gently bending curve (persistent random walk) as (steps, 2) points."""
    pos = np.array([rng.uniform(0, h), rng.uniform(0, w)])
    angle = rng.uniform(0, 2 * np.pi)
    pts = np.empty((steps, 2))
    for i in range(steps):
        angle += rng.normal(0, 0.08)
        pos = pos + 0.7 * np.array([np.sin(angle), np.cos(angle)])
        pts[i] = pos
    return pts


def render_sample(height: int, width: int, psf_sigma: float, seed: int) -> np.ndarray:
    """Relative fluorophore density in [0, 1] of a synthetic cell sample, PSF-blurred."""
    rng = np.random.default_rng(seed)
    h, w = height, width
    area = h * w / 512**2
    img = np.zeros((h, w), dtype=np.float64)
    # cell bodies: soft ellipses with a dim cytoplasm and a brighter, textured nucleus; each is
    # computed in a window of twice its long axis (beyond it, r² > 4: the terms are below 1e-10)
    for _ in range(max(1, round(4 * area))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(40, 90), rng.uniform(30, 70)
        th = rng.uniform(0, np.pi)
        reach = 2.0 * max(a, b)
        y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
        x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        r2 = u**2 + v**2
        cell = img[y0:y1, x0:x1]
        cell += 0.15 / (1 + np.exp(np.minimum((r2 - 1) * 8, 50)))
        cell += 0.25 / (1 + np.exp(np.minimum((r2 * 6 - 1) * 8, 50)))
    texture = ndimage.gaussian_filter(rng.random((h, w)), 3.0)
    img *= 0.6 + 0.8 * (texture - texture.min()) / (np.ptp(texture) + 1e-12)
    # filaments: thin bright lines along persistent random walks
    fil = np.zeros((h, w))
    for _ in range(max(1, round(25 * area))):
        pts = _smooth_curve(rng, h, w, int(rng.uniform(80, 400)))
        iy, ix = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
        ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        np.add.at(fil, (iy[ok], ix[ok]), rng.uniform(0.5, 1.0))
    img += np.minimum(fil, 1.5)
    # puncta: diffraction-limited spots of varied brightness
    n_p = max(1, round(300 * area))
    py, px = rng.integers(0, h, n_p), rng.integers(0, w, n_p)
    np.add.at(img, (py, px), rng.uniform(0.5, 3.0, n_p))
    if psf_sigma > 0:
        img = ndimage.gaussian_filter(img, psf_sigma)
    return img / img.max()


class SimulatedCamera(BaseSource):
    """A fluorescence camera looking at a synthetic sample. Seeded and reproducible.

    ``read()`` returns uint16 frames; ``expected(index)`` returns the noise-free mean of
    frame ``index`` in ADU (float32), the truth for evaluation.
    """

    def __init__(self, config: SimulatedCameraConfig | None = None, fps: float = 0.0) -> None:
        super().__init__(fps)
        self.config = config or SimulatedCameraConfig()
        c = self.config
        if c.sample == "flat":
            density = np.ones((c.height, c.width))
        else:
            density = render_sample(c.height, c.width, c.psf_sigma_px, c.seed)
        self._density = density.astype(np.float32)
        self._rng = np.random.default_rng(np.random.SeedSequence([c.seed, 1]))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.config.height, self.config.width)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def _photon_rate(self, index: int) -> np.ndarray:
        """Photons/s/pixel reaching the sensor for frame ``index`` (drift and bleaching)."""
        c = self.config
        density = self._density
        dy, dx = c.drift_px_per_frame
        if dy or dx:
            density = ndimage.shift(density, (dy * index, dx * index), order=1, mode="nearest")
        signal = c.peak_photon_rate * density
        if c.bleach_half_life_s is not None:
            elapsed = index * c.exposure_ms / 1000.0
            signal = signal * 0.5 ** (elapsed / c.bleach_half_life_s)
        return signal + c.background_photon_rate

    def _mean_electrons(self, index: int) -> np.ndarray:
        c = self.config
        t = c.exposure_ms / 1000.0
        return c.quantum_efficiency * self._photon_rate(index) * t + c.dark_current * t

    def expected(self, index: int) -> np.ndarray:
        """Noise-free mean of frame ``index`` in ADU (before quantisation and clipping)."""
        c = self.config
        return (self._mean_electrons(index) / c.gain_e_per_adu + c.offset_adu).astype(np.float32)

    def _next_frame(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        c = self.config
        electrons = self._rng.poisson(self._mean_electrons(index)).astype(np.float32)
        if c.read_noise_e > 0:
            electrons += self._rng.normal(0.0, c.read_noise_e, electrons.shape).astype(np.float32)
        adu = np.rint(electrons / c.gain_e_per_adu + c.offset_adu)
        np.clip(adu, 0, 2**c.bit_depth - 1, out=adu)
        meta = {"exposure_ms": c.exposure_ms, "camera": "simulated", "seed": c.seed}
        return adu.astype(np.uint16), meta


def simulate_stack(
    config: SimulatedCameraConfig, frames: int, progress: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``frames`` consecutive frames (uint16) and their noise-free truth (float32 ADU).

    ``progress(done, total)`` is called after each frame.
    """
    if frames < 1:
        raise ValueError(f"Expected at least 1 frame to simulate, got {frames}")
    cam = SimulatedCamera(config)
    raw = np.empty((frames, config.height, config.width), dtype=np.uint16)
    truth = np.empty(raw.shape, dtype=np.float32)
    for i in range(frames):
        raw[i] = cam.read().pixels
        truth[i] = cam.expected(i)
        if progress:
            progress(i + 1, frames)
    return raw, truth
