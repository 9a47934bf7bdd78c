"""Image quality metrics against a clean reference."""

from __future__ import annotations

import numpy as np

__all__ = ["data_range_of", "psnr", "ssim"]


def data_range_of(reference: np.ndarray) -> float:
    """The PSNR/SSIM data range of a reference: its dtype's range for integer images
    (255 for uint8, as the FMD benchmark reports), else max − min of its values."""
    if reference.dtype.kind in "ui":
        info = np.iinfo(reference.dtype)
        return float(info.max - info.min) if reference.dtype.kind == "u" else float(info.max)
    rng = float(np.max(reference) - np.min(reference))
    if rng <= 0:
        raise ValueError("Reference is constant: PSNR/SSIM data range would be 0")
    return rng


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB (float64 arithmetic)."""
    if image.shape != reference.shape:
        raise ValueError(f"Expected matching shapes, got {image.shape} and {reference.shape}")
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range**2 / mse))


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """Structural similarity (Wang et al. 2004; scikit-image, 7×7 window)."""
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            image.astype(np.float64), reference.astype(np.float64), data_range=data_range
        )
    )
