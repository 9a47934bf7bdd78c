"""Score a trained model on a noisy stack against a clean reference, beside classic baselines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from streamer.core.history import FrameHistory

from .config import EvaluateConfig
from .inference import TrainedModel
from .metrics import data_range_of, psnr, ssim

__all__ = ["best_gaussian", "check_reference", "denoiser_for", "evaluate", "evaluate_without_reference",
           "reference_warning", "save_figure", "score_raw"]

log = logging.getLogger("n2n.trainer")


def check_reference(raw: np.ndarray, reference: np.ndarray) -> None:
    """Raw must be (T, H, W); the reference (H, W) or (T, H, W) of the same frames."""
    if raw.ndim != 3:
        raise ValueError(f"Expected raw frames as a (T, H, W) stack, got shape {raw.shape}")
    if reference.ndim not in (2, 3) or reference.shape[-2:] != raw.shape[-2:] or (
        reference.ndim == 3 and reference.shape[0] != raw.shape[0]
    ):
        raise ValueError(
            f"Expected a reference of shape {raw.shape[-2:]} or {raw.shape}, got {reference.shape}"
        )


def _ref(reference: np.ndarray, t: int) -> np.ndarray:
    return reference[t] if reference.ndim == 3 else reference


def _scores(images: np.ndarray, reference: np.ndarray, rng: float, ssim_too: bool = True) -> dict[str, list[float]]:
    p = [psnr(im, _ref(reference, t), rng) for t, im in enumerate(images)]
    s = [ssim(im, _ref(reference, t), rng) for t, im in enumerate(images)] if ssim_too else []
    return {"psnr": p, "ssim": s}


def denoiser_for(model: TrainedModel | str | Path, config: EvaluateConfig | None = None,
                 output_dtype: str = "same") -> Any:
    """The streamer's Denoiser for a run folder: the one inference path, shared with ``n2n serve`` and ``n2n
    denoise``, so a frame scored offline is the frame served live. ``same`` (their default): the camera's dtype,
    clipped and rounded as they deliver it, so the scores are those of the pixels a user gets."""
    from streamer.denoiser import Denoiser

    config = config or EvaluateConfig()
    return Denoiser.from_model_dir(model.run_dir if isinstance(model, TrainedModel) else Path(model), config.engine,
                                   config.precision, config.device, output_dtype=output_dtype, retime=config.retime,
                                   trust_code=config.trust_code, averaged=config.averaged)


def best_gaussian(raw: np.ndarray, references: Sequence[np.ndarray], data_ranges: Sequence[float],
                  sigmas: Sequence[float], probe: int = 5) -> tuple[float, np.ndarray, dict[str, float]]:
    """The classic baseline: the Gaussian filter whose sigma scores best (mean PSNR) on the first ``probe``
    frames against their references (an oracle a user does not have). Returns the sigma, every frame
    filtered with it, and the search's scores."""
    frames = np.asarray(raw, dtype=np.float32)
    n = min(probe, len(frames))
    scores = {str(s): float(np.mean([psnr(ndimage.gaussian_filter(frames[i], s), references[i], data_ranges[i])
                                     for i in range(n)])) for s in sigmas}
    sigma = float(max(scores, key=scores.__getitem__))
    return sigma, np.stack([ndimage.gaussian_filter(f, sigma) for f in frames]), scores


def evaluate_without_reference(model: TrainedModel | str | Path, raw: np.ndarray, config: EvaluateConfig | None = None,
                               pairs: int = 64) -> tuple[dict[str, Any], np.ndarray]:
    """No clean reference: the Noise2Noise estimate of the gain over raw (dB) of the model as served and of the best
    Gaussian filter, from consecutive frames of ``raw`` (at most ``pairs`` pairs, spread over the stack; the
    estimate :mod:`trainer.gain` makes at the end of training, here on all rows). Returns the report and the first
    frame denoised (for the figure). Needs two or more frames of a still field."""
    from .gain import estimate_gain

    config = config or EvaluateConfig()
    if config.max_frames is not None:
        raw = raw[: config.max_frames]
    if raw.ndim != 3 or raw.shape[0] < 2:
        raise ValueError(f"expected two or more frames of a still field to estimate the gain without a reference, "
                         f"got {raw.shape[0] if raw.ndim == 3 else 1}")
    den_model = denoiser_for(model, config, output_dtype=config.output_dtype)
    try:
        k = den_model.input_frames
        gain = estimate_gain(Path("."), [raw], [0], k, min(pairs, raw.shape[0] - 1), denoiser=den_model)
        first = den_model(np.ascontiguousarray(raw[0]), previous=[raw[0]] * (k - 1) if k > 1 else [])
    finally:
        den_model.close()
    report = {"frames": int(raw.shape[0]), "reference": None, "pairs": gain["pairs"],
              "estimated_gain_db": round(gain["gain_db_model"], 3),
              "estimated_gain_db_gaussian": round(gain["gain_db_gaussian"], 3),
              "gaussian_sigma": gain["gaussian_sigma"], "noise_variance": gain["noise_variance"],
              "engine": gain["engine"], "precision": gain["precision"], "frames_raw": gain["frames_raw"],
              "frames_float_path": gain["frames_float_path"], "averaged": config.averaged,
              "method": "Noise2Noise estimate from consecutive frames (no reference): the mean squared difference "
                        "of the output to the next frame, less the noise variance from the frame pairs"}
    return report, np.asarray(first)


SCALE_TOLERANCE = 1.2
"""A reference whose mean or contrast differs from the data's average frame by more than this factor is on another
scale (the average of frames like these agrees to a few percent)."""


def reference_warning(raw: np.ndarray, reference: np.ndarray) -> str | None:
    """A reference on another scale than the data (another bit depth, a normalised or rescaled average): its
    scores would be meaningless (8 dB for a uint16 reference of uint8 data). None when both are of one integer bit
    depth (or either is float) and their means and contrasts agree within :data:`SCALE_TOLERANCE`."""
    m_raw, m_ref = float(np.mean(raw, dtype=np.float64)), float(np.mean(reference, dtype=np.float64))
    if m_raw <= 0 or m_ref <= 0:
        return None
    ratio = m_ref / m_raw
    advice = "a reference on another scale (bit depth, normalisation) scores wrong; it should be the average of frames "
    if raw.dtype.kind in "ui" and reference.dtype.kind in "ui" and raw.dtype.itemsize != reference.dtype.itemsize:
        return (f"the reference is {reference.dtype} and the data {raw.dtype}: {advice}like these (n2n average makes "
                "one, float32)")
    if not 1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE:
        return (f"the reference's mean ({m_ref:.4g}, {reference.dtype}) is {ratio:.3g}x the data's ({m_raw:.4g}, "
                f"{raw.dtype}): {advice}like these")
    slope = _contrast_ratio(raw, reference)  # the means can agree by chance (a stretched 8-bit copy): the contrast
    if slope is not None and not 1 / SCALE_TOLERANCE <= slope <= SCALE_TOLERANCE:
        return (f"the reference's contrast is {slope:.3g}x the data's (its pixels against the data's average, "
                f"{reference.dtype} against {raw.dtype}): {advice}like these")
    return None


def _contrast_ratio(raw: np.ndarray, reference: np.ndarray) -> float | None:
    """How much the reference stretches the data's contrast (1 for a reference on the data's scale): the inverse of
    the slope of the data's average frame against the reference (the data's noise is in the regressed variable, so
    it does not bias the slope), over at most ~250 k pixels; None for a flat reference."""
    step = max(1, int(np.sqrt(raw.shape[-2] * raw.shape[-1] / 250_000)))
    mean = np.mean(raw[:, ::step, ::step], axis=0, dtype=np.float64).ravel()
    ref = reference[..., ::step, ::step].astype(np.float64)
    ref = (ref.mean(axis=0) if ref.ndim == 3 else ref).ravel()
    var = float(np.var(ref))
    cov = float(np.mean((mean - mean.mean()) * (ref - ref.mean())))
    if var <= 0 or cov <= 0 or not np.isfinite(var):
        return None
    return var / cov


def evaluate(
    model: TrainedModel | str | Path,
    raw: np.ndarray,
    reference: np.ndarray,
    config: EvaluateConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Denoise every frame of ``raw`` with the run's exported model through the serving Denoiser and
    score it, the raw frames, and two baselines. A K-frame model sees frames t−K+1 … t for frame t, by the
    server's history rule (streamer/core/history.py: the first frame repeated until K have come).

    Baselines: a Gaussian filter with the sigma (from ``config.gaussian_sigmas``) that scores
    best against the reference, and the average of two consecutive frames (also four,
    for reference). Metrics are means over frames. Returns (report, denoised stack).
    """
    config = config or EvaluateConfig()
    check_reference(raw, reference)
    if config.max_frames is not None:
        raw = raw[: config.max_frames]
        reference = reference[: config.max_frames] if reference.ndim == 3 else reference
    rng = config.data_range or data_range_of(reference)
    den_model = denoiser_for(model, config, output_dtype=config.output_dtype)
    den_model.prepare(raw.shape[1:], raw[0])  # compile before the clock starts: seconds_per_frame is per frame
    t0 = time.perf_counter()
    den = np.empty(raw.shape, dtype=np.float32)
    # a K-frame model sees the frames before each one, by the server's rule (streamer/core/history.py): the stack is
    # one stream whose sequence numbers are the frame indices
    history = FrameHistory(den_model.input_frames, config.motion_threshold)
    try:
        for i, frame in enumerate(raw):  # one at a time, as a live server does
            den[i] = den_model(frame, previous=history.advance(frame, i))
            if progress and ((i + 1) % config.batch_size == 0 or i + 1 == len(raw)):
                progress(i + 1, len(raw))
        info = den_model.engine.info()
    finally:
        den_model.close()
    per_frame_s = (time.perf_counter() - t0) / len(raw)
    raw_f = raw.astype(np.float32)

    s_raw = _scores(raw_f, reference, rng)
    s_den = _scores(den, reference, rng)
    sigma, smoothed, sig_psnr = best_gaussian(raw_f, [_ref(reference, t) for t in range(len(raw_f))],
                                              [rng] * len(raw_f), config.gaussian_sigmas)
    s_gauss = _scores(smoothed, reference, rng)
    report: dict[str, Any] = {
        "frames": len(raw), "shape": list(raw.shape[1:]), "data_range": rng,
        "psnr_raw": float(np.mean(s_raw["psnr"])), "ssim_raw": float(np.mean(s_raw["ssim"])),
        "psnr_denoised": float(np.mean(s_den["psnr"])), "ssim_denoised": float(np.mean(s_den["ssim"])),
        "psnr_gaussian": float(np.mean(s_gauss["psnr"])), "ssim_gaussian": float(np.mean(s_gauss["ssim"])),
        "gaussian_sigma": sigma, "gaussian_sigma_search": sig_psnr,
    }
    for k in (2, 4):
        if len(raw) >= k:
            avg = np.stack([raw_f[t : t + k].mean(0) for t in range(len(raw) - k + 1)])
            s_avg = _scores(avg, reference, rng)
            report[f"psnr_average{k}"] = float(np.mean(s_avg["psnr"]))
            report[f"ssim_average{k}"] = float(np.mean(s_avg["ssim"]))
        else:
            report[f"psnr_average{k}"] = report[f"ssim_average{k}"] = None
    report["gain_db_over_raw"] = report["psnr_denoised"] - report["psnr_raw"]
    report["seconds_per_frame"] = per_frame_s
    report["engine"], report["precision"], report["device"] = info["engine"], info["precision"], info["device"]
    report["flagged"] = dict(den_model.counts)  # frames the served path's checks flagged (float path, kept raw)
    bright = den_model.bright_summary()
    if bright is not None:  # frames bright enough went to the model's bright network, as served
        report["bright_frames"], report["bright_precision"] = bright["frames"], bright["precision"]
    report["precision_note"] = info["precision_note"]
    # what was asked for: auto/auto is what n2n serve runs by default, so the scores are those of the served frames
    report["requested_engine"], report["requested_precision"] = config.engine, config.precision
    report["served_default"] = config.engine == "auto" and config.precision == "auto"
    report["averaged"] = config.averaged
    if history.frames > 1:
        report["input_frames"] = history.frames
        report["history"] = {"resets": dict(history.resets), "short": history.short,
                             "motion_fallbacks": history.motion_fallbacks}
    report["per_frame"] = {"psnr_raw": s_raw["psnr"], "psnr_denoised": s_den["psnr"], "psnr_gaussian": s_gauss["psnr"],
                           "ssim_raw": s_raw["ssim"], "ssim_denoised": s_den["ssim"]}
    return report, den


def score_raw(raw: np.ndarray, reference: np.ndarray | None, config: EvaluateConfig | None = None) -> dict[str, Any]:
    """A channel that a model set gives no model (``n2n evaluate`` on a multi-channel stack): the raw frames' scores
    as :func:`evaluate` reports them (``psnr_raw``, ``ssim_raw``; the frames only without a reference), and nothing
    denoised: such a channel is served raw, never by another channel's model."""
    config = config or EvaluateConfig()
    if reference is not None:
        check_reference(raw, reference)
    if config.max_frames is not None:
        raw = raw[: config.max_frames]
        reference = reference[: config.max_frames] if reference is not None and reference.ndim == 3 else reference
    report: dict[str, Any] = {"frames": len(raw), "shape": list(raw.shape[1:]), "denoised": False}
    if reference is None:
        return report
    rng = config.data_range or data_range_of(reference)
    s_raw = _scores(raw.astype(np.float32), reference, rng)
    return {**report, "data_range": rng, "psnr_raw": float(np.mean(s_raw["psnr"])),
            "ssim_raw": float(np.mean(s_raw["ssim"])), "per_frame": {"psnr_raw": s_raw["psnr"],
                                                                     "ssim_raw": s_raw["ssim"]}}


def _zoom_box(reference: np.ndarray, frac: float = 0.25) -> tuple[slice, slice]:
    """The crop (``frac`` of each side) with the most structure (local variance) in it."""
    h, w = reference.shape
    ch, cw = min(h, max(8, int(h * frac))), min(w, max(8, int(w * frac)))
    var = ndimage.uniform_filter(reference.astype(np.float64) ** 2, (ch, cw)) - ndimage.uniform_filter(
        reference.astype(np.float64), (ch, cw)) ** 2
    inner = var[ch // 2 : ch // 2 + h - ch + 1, cw // 2 : cw // 2 + w - cw + 1]  # centres of full crops
    cy, cx = np.unravel_index(np.argmax(inner), inner.shape)
    return slice(int(cy), int(cy) + ch), slice(int(cx), int(cx) + cw)


def save_figure(path: str | Path, raw: np.ndarray, denoised: np.ndarray, reference: np.ndarray | None,
                report: dict[str, Any] | None = None, gaussian: np.ndarray | None = None,
                reference_title: str = "reference") -> Path:
    """PNG: raw | (Gaussian filter) | denoised | reference on top, the same zoomed crop (the quarter with
    the most structure) below; with ``report`` the titles carry each one's PSNR (``psnr_raw``,
    ``psnr_gaussian``, ``gaussian_sigma``, ``psnr_denoised``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = report or {}

    def title(name: str, key: str) -> str:
        return f"{name}  {r[key]:.2f} dB" if key in r else name

    panels = [(title("raw", "psnr_raw"), raw)]
    if gaussian is not None:
        sigma = f" σ={r['gaussian_sigma']:g}" if "gaussian_sigma" in r else ""
        panels.append((title(f"Gaussian{sigma}", "psnr_gaussian"), gaussian))
    panels.append((title("denoised", "psnr_denoised"), denoised))
    if reference is not None:
        panels.append((reference_title, reference))
    path = Path(path)
    shown = reference if reference is not None else denoised  # sets the contrast and picks the zoom
    lo, hi = np.percentile(shown, [0.5, 99.8])
    ys, xs = _zoom_box(shown)
    fig, axes = plt.subplots(2, len(panels), figsize=(4 * len(panels), 8.4), constrained_layout=True)
    for col, (name, img) in enumerate(panels):
        axes[0, col].imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        axes[0, col].add_patch(matplotlib.patches.Rectangle((xs.start, ys.start), xs.stop - xs.start,
                                                            ys.stop - ys.start, fill=False, ec="yellow", lw=1))
        axes[0, col].set_title(name)
        axes[1, col].imshow(img[ys, xs], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        axes[1, col].set_title("zoom")
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
