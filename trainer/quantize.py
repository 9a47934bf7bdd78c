"""INT8 post-training quantization for OpenVINO (NNCF), calibrated on the run's own training frames
and kept only if it passes a quality check on the held-out validation rows.

NNCF's accuracy-controlled quantization quantizes every convolution, then returns to float the
layers that cost most quality, one at a time, until the loss on the held-out rows is within the limit.
The loss is measured the same way there and in the final check, which runs both models through the
streamer's OpenVINO engine (the code that serves them):

* with a clean reference: MSE against it, pooled over all held-out pixels, INT8 against float32;
* without one (Noise2Noise): against the next noisy frame. Its noise is independent of the output,
  so MSE(output, next frame) = MSE(output, clean) + σ² on average, with σ² estimated from the frame
  pair: the loss in dB against the clean image is estimated without ever seeing it. (PSNR against
  the noisy frame itself, also recorded, dilutes any loss by (MSE + σ²) / MSE, so it is not what decides.)

The INT8 model is kept if it loses at most ``max_loss_db`` and still runs at least half of its
convolutions in INT8 (otherwise it would not be faster); else nothing is written and the card's
``quantization`` entry says why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.card import INT8_NAME, Artifact, ModelCard, Normalization, Quantization, file_digest, frame_peak
from streamer.engines.openvino import OpenVINOEngine, import_openvino

from .pairs import held_out_pairs, window

__all__ = ["INT8_NAME", "calibration_patches", "checked_range", "quantize_int8"]

log = logging.getLogger("n2n.trainer")
MIN_INT8_SHARE = 0.5

# (normalised input (1, 1, h, w), normalised target (h, w), noise variance of the target or None when
# the target is a clean reference)
_Item = tuple[np.ndarray, np.ndarray, float | None]


def dark_level(stacks: Sequence[np.ndarray], norm: Normalization) -> float:
    """The camera values with no light: the noise model's offset, else the darkest training pixels (0.1st
    percentile)."""
    if norm.kind == "anscombe" and norm.offset is not None:
        return float(norm.offset)
    sample = np.concatenate([s[:: max(1, len(s) // 8), ::4, ::4].ravel() for s in stacks])
    return float(np.quantile(sample, 0.001))


def scaled(x: np.ndarray, scale: float, dark: float) -> np.ndarray:
    """Camera values with the light above ``dark`` scaled by ``scale`` (float32), as a longer exposure would."""
    x = np.asarray(x, dtype=np.float32)
    return x if scale == 1.0 else (x - np.float32(dark)) * np.float32(scale) + np.float32(dark)


def checked_range(stacks: Sequence[np.ndarray], norm: Normalization, scales: Sequence[float],
                  dark: float) -> tuple[float, float, float, float]:
    """What the INT8 export is checked on, in normalised values: the range the training frames take at every exposure
    scale (lowest, highest), and the range of their brightness (:func:`frame_peak`) from the dimmest frame at the
    lowest scale to the brightest at the highest. A frame outside either is not what INT8 was checked on: its
    internal activations may leave the calibrated ranges even where its pixels do not."""
    lo = min(float(s.min()) for s in stacks)
    hi = max(float(s.max()) for s in stacks)
    peaks = [frame_peak(f) for s in stacks for f in s[:: max(1, len(s) // 32)]]
    ends = np.array([scaled(np.array([lo, hi]), c, dark) for c in scales], dtype=np.float32).ravel()
    normed = norm.normalize(ends)
    peak_lo = float(norm.normalize(scaled(np.array([min(peaks)]), min(scales), dark))[0])
    peak_hi = float(norm.normalize(scaled(np.array([max(peaks)]), max(scales), dark))[0])
    return float(normed.min()), float(normed.max()), peak_lo, peak_hi


def calibration_patches(stacks: Sequence[np.ndarray], splits: Sequence[int], norm: Normalization, count: int,
                        size: int, multiple: int, seed: int = 0, k: int = 1, scales: Sequence[float] = (1.0,),
                        dark: float = 0.0) -> list[np.ndarray]:
    """``count`` normalised (1, 1, s, s) patches from the training rows (above ``splits``) of random
    frames: what the model sees when it runs, never the held-out rows. A K-frame model (``k`` > 1) gets
    (1, K, s, s) windows of consecutive frames ending at the drawn one (the oldest repeated at the start). Patch i
    has its light scaled by ``scales[i % len(scales)]`` (see :func:`scaled`)."""
    if min(splits) < multiple:
        raise ValueError(f"expected at least {multiple} training rows above the held-out rows, got {min(splits)}")
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for _ in range(count):
        i = int(rng.integers(len(stacks)))
        t, _, w = stacks[i].shape
        s = max(multiple, min(size, splits[i], w) // multiple * multiple)
        r = int(rng.integers(0, max(1, splits[i] - s + 1)))
        c = int(rng.integers(0, max(1, w - s + 1)))
        frame = int(rng.integers(t))
        scale = float(scales[len(out) % len(scales)])
        if k == 1:
            out.append(norm.normalize(scaled(stacks[i][frame, r : r + s, c : c + s], scale, dark))[None, None])
        else:
            out.append(norm.normalize(scaled(stacks[i][window(frame, k), r : r + s, c : c + s], scale, dark))[None])
    return out


def _validation_items(stacks: Sequence[np.ndarray], references: Sequence[np.ndarray] | None,
                      splits: Sequence[int], mode: str, val_pairs: int, norm: Normalization,
                      k: int = 1, scale: float = 1.0, dark: float = 0.0) -> list[_Item]:
    items: list[_Item] = []
    for x, y, ref, _ in held_out_pairs(stacks, splits, references, mode, val_pairs, k):
        xn = norm.normalize(scaled(x, scale, dark))
        batch, newest = (xn[None, None], xn) if xn.ndim == 2 else (xn[None], xn[-1])
        if ref is not None:
            items.append((batch, norm.normalize(scaled(ref, scale, dark)), None))
        else:
            assert y is not None
            yn = norm.normalize(scaled(y, scale, dark))
            items.append((batch, yn, float(np.mean((newest.astype(np.float64) - yn) ** 2) / 2)))
    return items


def _error_db(run: Callable[[np.ndarray], np.ndarray], items: Sequence[_Item]) -> tuple[float, dict[str, float]]:
    """10·log10 of the (estimated) MSE against the clean image, pooled over all items; lower is better."""
    se = noise = 0.0
    pixels = 0
    for x, target, sigma2 in items:
        pred = run(x)[0, 0].astype(np.float64)
        se += float(np.sum((pred - target) ** 2))
        noise += (sigma2 or 0.0) * target.size
        pixels += target.size
    mse, sigma2_mean = se / pixels, noise / pixels
    clean = max(mse - sigma2_mean, 0.01 * mse)  # guard: σ² overestimated when the sample moved
    return 10 * math.log10(max(clean, 1e-30)), {"mse_vs_target": mse, "noise_variance": sigma2_mean,
                                                "mse_clean_estimate": clean}


def _int8_share(model: Any) -> tuple[int, int]:
    """(convolutions whose weights are quantized, all convolutions) of an OpenVINO model."""
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]

    def quantized(conv: Any) -> bool:
        node = conv.input_value(1).get_node()
        while node.get_type_name() in ("Convert", "Multiply", "Subtract", "Reshape"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "FakeQuantize" or node.get_element_type().get_type_name() in ("i8", "u8")

    return sum(quantized(c) for c in convs), len(convs)


def _check(onnx: Path, int8: Path, by_scale: Mapping[float, Sequence[_Item]], max_loss_db: float) -> dict[str, Any]:
    """Both models through the serving engine on the held-out items at each exposure scale: the loss is the worst
    scale's."""
    items = next(iter(by_scale.values()))
    fp32 = OpenVINOEngine(onnx, precision="fp32")
    q = OpenVINOEngine(onnx, int8_path=int8, precision="int8")
    fp32.input_frames = q.input_frames = int(items[0][0].shape[1])  # K consecutive frames per input
    losses: dict[str, float] = {}
    parts: dict[str, Any] = {}
    try:
        for scale, its in by_scale.items():
            err_fp32, parts_fp32 = _error_db(fp32.infer, its)
            err_int8, parts_int8 = _error_db(q.infer, its)
            losses[f"{scale:g}"] = err_int8 - err_fp32
            if scale == 1.0 or len(by_scale) == 1:
                parts = {"fp32": parts_fp32, "int8": parts_int8}
    finally:
        fp32.close()
        q.close()
    against = "reference" if items[0][2] is None else "next frame (Noise2Noise), noise-corrected"
    loss = max(losses.values())
    return {"against": against, "items": len(items), "pixels": int(sum(t.size for _, t, _ in items)),
            "loss_db": loss, "loss_db_by_exposure_scale": losses, **parts, "passed": bool(loss <= max_loss_db)}


def quantize_int8(run_dir: str | Path, stacks: Sequence[np.ndarray], references: Sequence[np.ndarray] | None,
                  splits: Sequence[int], mode: str, val_pairs: int = 8, max_loss_db: float = 0.1,
                  samples: int = 32, patch: int = 256, seed: int = 0,
                  calibration: list[np.ndarray] | None = None,
                  scales: Sequence[float] = (1.0, 2.0)) -> Quantization:
    """Quantize ``run_dir/model.onnx`` to INT8 and keep it (``model_int8.xml``/``.bin``, listed in the
    card) only if it passes (see the module docstring). ``calibration`` replaces the patches drawn from
    the training frames (tests use it to calibrate deliberately wrongly)."""
    run_dir = Path(run_dir)
    card = ModelCard.load(run_dir)
    norm = card.normalization
    onnx = card.artifact("onnx")
    target = run_dir / INT8_NAME
    for stale in (target, target.with_suffix(".bin")):
        stale.unlink(missing_ok=True)  # an older INT8 export must not outlive a failed new one
    card.artifacts = {k: v for k, v in card.artifacts.items() if k != "openvino_int8"}
    scales = sorted(float(c) for c in scales) or [1.0]
    dark = dark_level(stacks, norm)
    lo, hi, peak_lo, peak_hi = checked_range(stacks, norm, scales, dark)
    if calibration is None:
        calibration = calibration_patches(stacks, splits, norm, max(samples, len(scales)), patch, card.size_multiple,
                                          seed, card.input_frames, scales, dark)
        source: dict[str, Any] = {"frames": "training rows of the run's own frames", "patches": len(calibration),
                                  "patch_size": int(calibration[0].shape[-1]), "seed": seed}
    else:
        source = {"frames": "given by the caller", "patches": len(calibration)}
    source |= {"exposure_scales": scales, "dark_level": dark, "checked_range": [lo, hi],
               "checked_peak": [peak_lo, peak_hi]}
    by_scale = {c: _validation_items(stacks, references, splits, mode, val_pairs, norm, card.input_frames, c, dark)
                for c in scales}
    items = [it for its in by_scale.values() for it in its]

    scale_of = {id(it[1]): c for c, its in by_scale.items() for it in its}

    def metric(compiled: Any, data: Any) -> float:  # NNCF maximises it
        """Minus the mean over exposure scales of each scale's error in dB: every scale weighs the same (a pooled
        MSE would be the brightest scale's alone), so a drop in it is the scales' mean loss."""
        out = compiled.output(0)
        groups: dict[float, list[_Item]] = {}
        for it in data:
            groups.setdefault(scale_of.get(id(it[1]), 1.0), []).append(it)
        return -float(np.mean([_error_db(lambda x: compiled(x)[out], its)[0] for its in groups.values()]))

    result: Quantization
    try:
        import nncf

        ov = import_openvino()
        for name in ("nncf", "openvino"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from openvino import passes

        model = ov.Core().read_model(str(onnx))
        folding = passes.Manager()  # weights computed in the graph (the sub-pixel decoder's) become constants
        folding.register_pass(passes.ConstantFolding())
        folding.run_passes(model)
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
            quantized = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(calibration), nncf.Dataset(items), metric, max_drop=max_loss_db,
                drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calibration),
                preset=nncf.QuantizationPreset.MIXED)
        n_int8, n_conv = _int8_share(quantized)
        with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
            tmp_xml = Path(tmp) / INT8_NAME
            ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
            check = _check(onnx, tmp_xml, by_scale, max_loss_db)
            check["int8_convolutions"] = f"{n_int8} of {n_conv}"
            keep = check["passed"] and n_int8 >= MIN_INT8_SHARE * n_conv
            if keep:
                shutil.move(str(tmp_xml.with_suffix(".bin")), target.with_suffix(".bin"))
                shutil.move(str(tmp_xml), target)
    except ImportError as exc:
        result = Quantization(status="skipped", reason=f"nncf or openvino is not installed ({exc})",
                              calibration=source, max_loss_db=max_loss_db)
    except Exception as exc:  # NNCF or OpenVINO refusing this graph must not fail training
        log.warning("INT8 quantization failed: %s", exc)
        result = Quantization(status="failed", reason=f"{type(exc).__name__}: {exc}", calibration=source,
                              max_loss_db=max_loss_db)
    else:
        loss = check["loss_db"]
        how = (f"{'loses' if loss >= 0 else 'gains'} {abs(loss):.3f} dB against float32 on the held-out rows at "
               f"the worst of {len(scales)} exposure scales "
               f"{scales[0]:g}x to {scales[-1]:g}x "
               f"({'against the reference' if items[0][2] is None else 'noise-corrected, vs the next frame'}); "
               f"{n_int8} of {n_conv} convolutions in INT8")
        if keep:
            card.artifacts = {**card.artifacts, "openvino_int8": Artifact(
                path=target.name, format="openvino_int8", sha256=file_digest(target),
                weights=target.with_suffix(".bin").name, weights_sha256=file_digest(target.with_suffix(".bin")),
                layout=(card.artifacts["onnx"].layout if "onnx" in card.artifacts else "NCHW float32, normalised")
                + " (INT8 inside)")}
            result = Quantization(status="kept", reason=f"kept: {how}", calibration=source, check=check,
                                  max_loss_db=max_loss_db)
        else:
            why = (f"more than the {max_loss_db} dB allowed" if not check["passed"] else
                   f"fewer than {MIN_INT8_SHARE:.0%} of the convolutions stayed INT8, so it would not be faster")
            result = Quantization(status="rejected", reason=f"not written: {how}: {why}",
                                  calibration=source, check=check, max_loss_db=max_loss_db)
    log.info("INT8: %s", result.reason)
    card.quantization = result
    card.save()
    return result
