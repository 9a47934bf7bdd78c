"""The bright network (``data.bright_expert``): a second network in the model folder for frames much brighter than
the training frames, which the Denoiser serves with it (:class:`streamer.core.card.BrightExpert`).

One network trained over the whole range of exposures (``data.exposure_augment``) gives the bright end about 1 dB
less than a network trained at that light (docs/results.md): the network is shared between noise levels it must
tell apart. Fine-tuned from it on pairs at ``band`` times the recorded light only (sums of consecutive frames: a
sum of Poisson counts is the count of the summed light), a second network reaches the matched one for about a third
of the training time. It is validated on sums of the training frames (the light it serves), served in float (no INT8:
see :func:`train_bright`), and kept in ``<model>/bright/`` as a whole model folder.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from streamer.core.card import BrightExpert, ModelCard, frame_peak

from .config import TrainConfig
from .inference import load_weights
from .loop import CHECKPOINT_NAME, train
from .pairs import summed_light

__all__ = ["BRIGHT_DIR", "BrightInterrupted", "bright_refusal", "main_config", "reference_peak", "summed_frames",
           "train_bright"]

log = logging.getLogger("n2n.trainer")

BRIGHT_DIR = "bright"
"""The bright network's folder inside the model folder."""


def bright_refusal(config: TrainConfig, stacks: Sequence[np.ndarray] | None = None) -> str | None:
    """Why ``data.bright_expert`` cannot be trained with this config (and these training stacks, where given); None:
    it can, or none is asked for."""
    be = config.data.bright_expert
    if be is None:
        return None
    if config.mode != "n2n" or config.data.normalization != "anscombe":
        return (f"it needs mode n2n and data.normalization anscombe (its pairs are sums of consecutive frames, told "
                f"apart by the camera's noise model), got mode {config.mode} and normalization "
                f"{config.data.normalization}")
    if stacks:
        k, shortest = config.model.input_frames, min(len(s) for s in stacks)
        need = (k + 1) * math.ceil(be.band[0])
        if shortest < need:
            return (f"its pairs sum {math.ceil(be.band[0])} frames or more ({k + 1} blocks of them), which takes at "
                    f"least {need} frames a stack, got a stack of {shortest}")
    return None


def main_config(config: TrainConfig, stacks: Sequence[np.ndarray] | None = None) -> TrainConfig:
    """The first network's config: with a bright network (that these stacks allow) and a time budget, its share of
    the budget (``optim.max_minutes / (1 + bright_expert.epochs_share)``); otherwise ``config`` itself."""
    be, minutes = config.data.bright_expert, config.optim.max_minutes
    if be is None or minutes is None or bright_refusal(config, stacks):
        return config
    return config.model_copy(update={"optim": config.optim.model_copy(
        update={"max_minutes": minutes / (1 + be.epochs_share)})})


def summed_frames(stack: np.ndarray, n: int, offset: float) -> np.ndarray:
    """A stack's frames summed ``n`` at a time, the offset counted once (float32): frames at ``n`` times the light
    (a reference, (H, W) alone, is scaled the same way)."""
    if stack.ndim == 2:
        return (stack.astype(np.float32) - np.float32(offset)) * np.float32(n) + np.float32(offset)
    sums = np.empty((len(stack) // n, *stack.shape[1:]), np.float32)
    for i in range(len(sums)):  # block by block: no float copy of the whole stack
        sums[i] = summed_light(stack[i * n : (i + 1) * n], offset)
    return sums


def reference_peak(stacks: Sequence[np.ndarray], offset: float) -> float:
    """The training frames' brightness above the offset: the median :func:`frame_peak` of up to 16 frames a stack."""
    peaks = [frame_peak(f) - offset for s in stacks for f in s[:: max(1, len(s) // 16)]]
    return float(np.median(peaks))


def _bright_config(config: TrainConfig, epochs: int) -> TrainConfig:
    be = config.data.bright_expert
    assert be is not None
    oc, minutes = config.optim, config.optim.max_minutes
    optim = oc.model_copy(update={"epochs": epochs, "early_stopping_patience": epochs,
                                  "max_minutes": None if minutes is None else
                                  minutes * be.epochs_share / (1 + be.epochs_share)})
    data = config.data.model_copy(update={"exposure_augment": list(be.band), "exposure_augment_share": 1.0,
                                          "bright_expert": None})
    return config.model_copy(update={"optim": optim, "data": data})


class BrightInterrupted(KeyboardInterrupt):
    """Ctrl-C while the bright network trained: the first network is finished and serves every frame (``card``);
    the bright network was dropped (``n2n train --resume`` makes it). Still a KeyboardInterrupt: a caller that stops on
    Ctrl-C stops."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__("interrupted while training the bright network: the first network is finished")
        self.card = card


def train_bright(config: TrainConfig, run_dir: Path, stacks: Sequence[np.ndarray],
                 refs: Sequence[np.ndarray] | None, provenance: dict[str, Any],
                 console: Console | None = None) -> ModelCard:
    """Fine-tune the trained network in ``run_dir`` into its bright network (``run_dir/bright``) and record it in the
    card, which is returned. Where it cannot be made (:func:`bright_refusal`, or training frames with no light above
    the offset) the log says why and the first network serves every frame. Ctrl-C during it: nothing of it is kept and
    :class:`BrightInterrupted` is raised; any other failure leaves nothing of it either. It has no INT8 export, and
    serves in float32 (see below)."""
    from .run import _export

    be = config.data.bright_expert
    assert be is not None
    card = ModelCard.load(run_dir)
    refusal = bright_refusal(config, stacks)
    if refusal:
        log.warning("no bright network: %s; the one network serves every frame", refusal)
        return card
    net, norm = load_weights(run_dir)
    offset = float(norm.offset)  # type: ignore[arg-type]  # (anscombe: bright_refusal says so)
    peak = reference_peak(stacks, offset)
    if not peak > 0:
        log.warning("no bright network: the training frames' brightest pixels lie at the camera's offset (%.4g ADU "
                    "above it), so no frame can be told brighter than them; the one network serves every frame", peak)
        return card
    low, high = be.band
    k = card.input_frames
    n = min(max(2, round(math.sqrt(low * high))), min(len(s) for s in stacks) // (k + 1))
    epochs = max(1, math.ceil(config.optim.epochs * be.epochs_share))
    sub = _bright_config(config, epochs)
    out = run_dir / BRIGHT_DIR
    if out.exists():
        shutil.rmtree(out)
    summed = [summed_frames(s, n, offset) for s in stacks]
    summed_refs = [summed_frames(r, n, offset) for r in refs] if refs else None
    log.info("bright network: frames %g to %g times as bright as these, fine-tuned for %d epoch(s), validated on "
             "sums of %d frames", low, high, epochs, n)
    try:
        result = train(sub, stacks, out, references=refs, console=console, norm=norm, init_state=net.state_dict(),
                       validation=(summed, summed_refs))
        if result.interrupted:
            raise KeyboardInterrupt
        (out / CHECKPOINT_NAME).unlink(missing_ok=True)  # (nothing resumes it: a resumed run makes it again)
        _export(sub, out, stacks, {**provenance, "summed_frames": n}, result,
                extra={"bright_expert_of": card.name, "band": list(be.band)})
    except KeyboardInterrupt:
        shutil.rmtree(out, ignore_errors=True)
        raise BrightInterrupted(card) from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    # no INT8: at the light it serves the network's error is small and INT8's steps are not. Made and checked on sums
    # of the training frames it lost 0.08 dB, and served 100 ms frames of another field 0.32 dB below float32 (the
    # simulator, seed 2). The Denoiser serves it in float32 (bf16 cost it 0.08-0.17 dB there).
    card.bright_expert = BrightExpert(path=BRIGHT_DIR, band=list(be.band), serves_from=low, reference_peak=peak)
    card.save(run_dir)
    bright = ModelCard.load(out)
    log.info("bright network: validation %s at %d× the light (best epoch %d of %d)",
             f"{bright.metrics['val_psnr']:.2f} dB" if "val_psnr" in bright.metrics
             else f"loss {bright.metrics.get('val_loss', float('nan')):.4f}", n, result.best_epoch, result.epochs)
    return card
