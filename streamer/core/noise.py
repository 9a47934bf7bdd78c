"""A camera's noise model from its frames: photon transfer (the variance of consecutive frames' difference against
their brightness) for the gain, and the skew of the darkest pixels' noise for the offset. What the ``anscombe``
normalisation (:class:`~streamer.core.card.Normalization`) and the trainer's exposure augmentation stand on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["estimate_noise_model"]


def estimate_noise_model(stacks: Sequence[np.ndarray], gain: float | None = None, offset: float | None = None,
                         max_pairs: int = 16, bins: int = 32) -> dict[str, float]:
    """A camera's noise model from consecutive frames of a still field, the way a camera is characterised (photon
    transfer): half the variance of a frame difference against the mean of the two frames, in bins of brightness,
    fitted by a line ``var = gain·mean + c`` (weighted by pixels per bin; the brightest bins, where a sensor
    saturates, left out). ``c = read_noise² − gain·offset``: the line alone cannot split ``c`` into offset and read
    noise, and the darkest pixels of a fluorescence frame still hold background light (at 100 ms the simulated
    camera's darkest pixels lie 30 ADU above its offset). Unless given, the offset comes from the skew of the darkest
    pixels over time: photon (Poisson) noise has a third cumulant equal to its mean and read noise has none, so in
    ADU ``k3 = gain²·(mean − offset)`` (:func:`_offset_from_skew`); it is kept between the lowest offset the line
    allows (no read noise) and the darkest pixels' level, and the read noise follows from it."""
    means, halfvars = [], []
    pairs = 0
    dark: list[tuple[np.ndarray, np.ndarray]] = []  # per stack: the darkest pixels' level and their k3
    for s in stacks:
        if len(s) < 2:
            continue
        # the brightness of a pixel: its mean over up to 64 frames (the mean of the pair alone is noisy enough to
        # flatten the fitted slope at low light)
        px = max(1, int(math.sqrt(s.shape[1] * s.shape[2] / 2**20)))  # at most ~1 M pixels a frame
        sel = s[:: max(1, len(s) // 64), ::px, ::px]
        total = np.zeros(sel.shape[1:], np.float64)
        for frame in sel:
            total += frame
        level = (total / len(sel)).ravel()
        if len(sel) >= 8:
            dark.append(_dark_skew(sel, level))
        step = max(1, (len(s) - 1) // max_pairs)
        for t in range(0, len(s) - 1, step):
            a, b = s[t, ::px, ::px].astype(np.float64), s[t + 1, ::px, ::px].astype(np.float64)
            means.append(level)
            halfvars.append(((a - b) ** 2 / 2).ravel())
            pairs += 1
    m, v = np.concatenate(means), np.concatenate(halfvars)
    lo, hi = np.quantile(m, [0.001, 0.995])
    if not hi > lo:
        raise ValueError("the training frames hold one brightness only: cannot estimate the camera's noise model "
                         "(give data.noise_model: gain, offset, read_noise)")
    edges = np.quantile(m[(m >= lo) & (m <= hi)], np.linspace(0, 1, bins + 1))
    edges = np.unique(edges)
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, len(edges) - 2)
    keep = (m >= lo) & (m <= hi)
    counts = np.bincount(idx[keep], minlength=len(edges) - 1).astype(np.float64)
    sum_m = np.bincount(idx[keep], weights=m[keep], minlength=len(edges) - 1)
    sum_v = np.bincount(idx[keep], weights=v[keep], minlength=len(edges) - 1)
    ok = counts > 50
    if ok.sum() < 2:
        raise ValueError("too few pixels to estimate the camera's noise model from the training frames")
    bm, bv, w = sum_m[ok] / counts[ok], sum_v[ok] / counts[ok], counts[ok]
    if gain is None:
        A = np.stack([bm, np.ones_like(bm)], axis=1) * np.sqrt(w)[:, None]
        slope, c = np.linalg.lstsq(A, bv * np.sqrt(w), rcond=None)[0]
        gain = float(slope)
    else:
        c = float(np.sum(w * (bv - gain * bm)) / np.sum(w))
    if not gain > 0:
        raise ValueError(f"the frame-to-frame variance does not grow with brightness (slope {gain:.3g}): these are "
                         "not consecutive frames of a still field, or not raw camera counts; give data.noise_model")
    if offset is None:
        darkest = float(np.quantile(m, 0.001))
        lowest = -float(c) / gain  # the offset with no read noise at all
        skewed = _offset_from_skew(dark, gain)
        offset = darkest if skewed is None else float(np.clip(skewed, min(lowest, darkest), darkest))
    read_var = float(c) + gain * offset
    if read_var < 0:  # below the lowest offset the variance line allows (no read noise): that one
        offset, read_var = -float(c) / gain, 0.0
    return {"gain": gain, "offset": float(offset), "read_noise": float(np.sqrt(read_var)), "pairs": pairs}


def _dark_skew(sel: np.ndarray, level: np.ndarray, share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The darkest ``share`` of the pixels of a still field (``sel``: (T, H, W) frames in time order, ``level``:
    each pixel's mean over them, flattened): their level and the unbiased third cumulant (k3) of each pixel's noise.

    k3 is taken from each pixel's deviations from a straight line through its values over time, not from its
    mean: a slow change of the light (bleaching, drift) skews the deviations from the mean (a field fading to 1/e
    over the frames put the offset 3 ADU low) but hardly those from the line. The line takes two degrees of
    freedom; ``E[Σ d³] = k3 · Σᵢⱼ Mᵢⱼ³`` with ``M`` the residual maker of the fit makes the estimate unbiased."""
    n = len(sel)
    pick = np.argpartition(level, max(1, int(share * level.size)) - 1)[: max(1, int(share * level.size))]
    mean = level[pick]
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2
    tt = float((t * t).sum())
    slope = np.zeros(pick.size, np.float64)
    for ti, frame in zip(t, sel):
        slope += ti * frame.ravel()[pick]
    slope /= tt
    m3 = np.zeros(pick.size, np.float64)
    for ti, frame in zip(t, sel):
        d = frame.ravel()[pick].astype(np.float64) - mean - slope * ti
        m3 += d * d * d
    design = np.stack([np.ones(n), t], axis=1)
    resid = np.eye(n) - design @ np.linalg.pinv(design)
    return mean, m3 / float((resid**3).sum())


def _offset_from_skew(dark: list[tuple[np.ndarray, np.ndarray]], gain: float) -> float | None:
    """The offset where the darkest pixels' photon noise says no light falls: ``mean(level) − mean(k3) / gain²``
    (Poisson's third cumulant equals its mean; Gaussian read noise has none), or None where the pixels are too few.
    Its standard error is about 1 ADU on 80 frames of 256² at any exposure of the simulated camera (the darkest
    pixels' level lies 3 ADU above the offset at 10 ms, 30 at 100 ms); the caller keeps it within the bounds the
    variance line allows."""
    if not dark:
        return None
    level = np.concatenate([d[0] for d in dark])
    k3 = np.concatenate([d[1] for d in dark])
    if level.size < 1000:
        return None
    offset = float(level.mean() - k3.mean() / gain**2)
    return offset if np.isfinite(offset) else None
