"""What a trained run gains over the raw frames, estimated without a clean reference.

The Noise2Noise identity: for an output ``out`` that does not depend on the next frame ``y`` (its noise is
independent of frame t's and zero-mean), ``E[(out − y)²] = E[(out − s)²] + σ²`` with ``s`` the clean image and
``σ²`` the noise variance of one frame; and ``E[(x − y)²] = 2σ²`` for two consecutive frames. So the MSE against
the clean image, never seen, is ``MSE(out, y) − σ²`` with ``σ² = mean((x − y)²) / 2``, pooled over the held-out
rows (the same identity as ``_error_db`` in :mod:`trainer.quantize`; all in intensity units). Raw frames score
``σ²`` by it, so the gain of a denoiser over raw is ``10·log10(σ² / (MSE(out, y) − σ²))``.

:func:`estimate_gain` scores the run's served model (what ``n2n serve`` runs: the same Denoiser, its default
engine and precision, its checks) and, for a yardstick, a Gaussian filter whose sigma is chosen by the same
estimate (no oracle). A model that does not beat the Gaussian filter is not worth serving yet:
:func:`gain_summary` words the warning ``n2n train`` prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GAUSSIAN_SIGMAS", "NOT_BETTER_THAN_GAUSSIAN", "estimate_gain", "gain_summary"]

GAUSSIAN_SIGMAS = (0.6, 0.8, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
"""The Gaussian filter's sigmas tried (pixels); the one with the lowest estimated MSE is kept."""

NOT_BETTER_THAN_GAUSSIAN = ("this model is not better than a Gaussian filter on your held-out rows (by the estimate, "
                            "good to a few tenths of a dB): train longer (--epochs) or on more frames, or check it "
                            "against a reference with n2n evaluate")


def _clean_mse(mse_vs_next: float, sigma2: float) -> float:
    """MSE against the clean image by the identity; at least 1 % of the MSE against the next frame (σ² is
    overestimated where the sample moved between the two frames: never a negative or zero error)."""
    return max(mse_vs_next - sigma2, 0.01 * mse_vs_next, 1e-30)


def _db(sigma2: float, mse: float) -> float:
    return 10 * math.log10(sigma2 / mse)


def estimate_gain(run_dir: str | Path, stacks: Sequence[np.ndarray], splits: Sequence[int], k: int = 1,
                  n_pairs: int = 32, sigmas: Sequence[float] = GAUSSIAN_SIGMAS, denoiser: Any = None) -> dict[str, Any]:
    """Estimated gain over raw (dB) of the run's served model and of the best Gaussian filter, on the held-out
    rows (``splits[i]:``) of ``stacks``: ``n_pairs`` consecutive frames (t, t+1) per stack spread in time
    (:func:`trainer.pairs.held_out_pairs`; a K-frame model sees frames t−K+1 … t). ``denoiser``: the one to
    score (default: ``Denoiser.from_model_dir(run_dir)``, what ``n2n serve`` runs).

    Returns ``gain_db_model``, ``gain_db_gaussian``, ``gaussian_sigma``, ``noise_variance`` (σ², intensity²),
    ``mse_model`` and ``mse_gaussian`` (estimated against the clean image), ``pairs``, ``engine``, ``precision``,
    and ``frames_raw`` / ``frames_float_path`` (held-out frames the Denoiser's checks served raw / by the float32
    model). Raises ValueError without a held-out pair, or where consecutive frames are identical (no noise)."""
    from scipy.ndimage import gaussian_filter

    from streamer.denoiser import FLAG_FLOAT_PATH, is_raw

    from .pairs import held_out_pairs

    usable = [(s, split) for s, split in zip(stacks, splits) if s.ndim == 3 and s.shape[0] >= 2]
    if not usable:
        raise ValueError("expected at least one stack of two or more frames to estimate the gain on")
    items = held_out_pairs([s for s, _ in usable], [sp for _, sp in usable], None, "n2n", n_pairs, k)
    own = denoiser is None
    if own:
        from streamer.denoiser import Denoiser

        denoiser = Denoiser.from_model_dir(run_dir)
    try:
        se_pair = se_model = 0.0
        se_gauss = [0.0] * len(sigmas)
        pixels = raw = float_path = 0
        for x, y, _, _ in items:
            assert y is not None
            newest = x if x.ndim == 2 else x[-1]
            previous = [] if x.ndim == 2 else list(x[:-1])
            out = denoiser(np.ascontiguousarray(newest), previous=previous)
            last = getattr(denoiser, "last_flags", None)
            flags = tuple(last[0]) if isinstance(last, list | tuple) and len(last) == 1 else ()
            raw += is_raw(flags)
            float_path += FLAG_FLOAT_PATH in flags
            target = y.astype(np.float64)
            noisy = newest.astype(np.float64)
            se_pair += float(np.sum((noisy - target) ** 2))
            se_model += float(np.sum((out.astype(np.float64) - target) ** 2))
            for i, s in enumerate(sigmas):
                se_gauss[i] += float(np.sum((gaussian_filter(noisy, s) - target) ** 2))
            pixels += target.size
        info = denoiser.engine.info() if hasattr(denoiser.engine, "info") else {}
        engine = str(getattr(denoiser.engine, "name", info.get("engine", "?")))
        precision = str(getattr(denoiser.engine, "precision", info.get("precision", "?")))
    finally:
        if own:
            denoiser.close()
    if not pixels:
        raise ValueError("expected held-out rows to estimate the gain on, got none")
    sigma2 = se_pair / pixels / 2
    if sigma2 <= 0:
        raise ValueError("consecutive held-out frames are identical: no noise to estimate a gain over")
    mse_model = _clean_mse(se_model / pixels, sigma2)
    gauss = [_clean_mse(se / pixels, sigma2) for se in se_gauss]
    best = int(np.argmin(gauss))
    return {"gain_db_model": _db(sigma2, mse_model), "gain_db_gaussian": _db(sigma2, gauss[best]),
            "gaussian_sigma": float(sigmas[best]), "noise_variance": sigma2, "mse_model": mse_model,
            "mse_gaussian": gauss[best], "pairs": len(items), "engine": engine, "precision": precision,
            "frames_raw": raw, "frames_float_path": float_path}


def gain_summary(metrics: dict[str, float]) -> tuple[str | None, str | None]:
    """What ``n2n train`` says of a card's ``estimated_gain_db`` and ``estimated_gain_db_gaussian``: (the line,
    e.g. ``+6.1 dB (Gaussian filter: +4.2 dB), no reference needed``; the warning when the model does not beat
    the Gaussian filter, else None). (None, None) without the estimate."""
    model, gauss = metrics.get("estimated_gain_db"), metrics.get("estimated_gain_db_gaussian")
    if model is None or gauss is None:
        return None, None
    line = f"{model:+.1f} dB (Gaussian filter: {gauss:+.1f} dB), no reference needed"
    return line, (NOT_BETTER_THAN_GAUSSIAN if model <= gauss else None)
