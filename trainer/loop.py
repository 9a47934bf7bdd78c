"""The training loop: Adam with warm-up and cosine decay, validation, early stopping,
checkpoints and resume, a rich progress bar."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from streamer.core.card import Normalization
from streamer.core.noise import estimate_noise_model

from .config import TrainConfig
from .inference import pick_device, predict, save_torch, save_weights
from .metrics import psnr, ssim
from .pace import Pace, ThreadProbe, format_seconds
from .pairs import ExposureAugment, PairSampler, held_out_pairs, split_rows
from .unet import UNet

__all__ = ["TrainResult", "train", "CHECKPOINT_NAME", "pick_precision", "check_stacks"]

log = logging.getLogger("n2n.trainer")
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainResult:
    """What a training run produced and why it stopped."""

    run_dir: Path
    epochs: int
    steps: int
    seconds: float
    stopped: str
    best_epoch: int
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    precision: str = "fp32"
    interrupted: bool = False
    """Stopped by Ctrl-C after at least one epoch: the best epoch so far was saved (a usable, partial run)."""


def pick_precision(preference: str, device: torch.device) -> str:
    """'auto' → bf16 autocast where the hardware has native bf16, else fp32."""
    if preference != "auto":
        return preference
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def check_stacks(
    stacks: Sequence[np.ndarray], mode: str, references: Sequence[np.ndarray] | None
) -> None:
    """Refuse data the trainer cannot learn from, saying what was expected."""
    if not stacks:
        raise ValueError("Expected at least one training stack, got none")
    for i, s in enumerate(stacks):
        if s.ndim != 3:
            raise ValueError(f"Stack {i}: expected a (T, H, W) time series, got shape {s.shape}")
        if mode == "n2n" and s.shape[0] < 2:
            raise ValueError(
                f"Stack {i}: Noise2Noise needs at least 2 consecutive frames, got {s.shape[0]}"
            )
        if s.dtype.kind == "f" and not np.isfinite(s).all():
            raise ValueError(f"Stack {i}: contains NaN or infinite values")
    if mode == "supervised":
        if references is None or len(references) != len(stacks):
            n = 0 if references is None else len(references)
            raise ValueError(
                f"Supervised mode needs one clean reference per stack: {len(stacks)} stacks, {n} references"
            )
    if references is not None:
        for i, (s, r) in enumerate(zip(stacks, references)):
            if r.shape[-2:] != s.shape[-2:] or (r.ndim == 3 and r.shape[0] != s.shape[0]) or r.ndim not in (2, 3):
                raise ValueError(
                    f"Reference {i}: expected (H, W) = {s.shape[-2:]} or (T, H, W) = {s.shape}, got {r.shape}"
                )


_RESUMABLE = {"epochs", "max_minutes", "early_stopping_patience", "device", "num_threads", "adapt_threads"}


def _incompatible_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys that differ between two config dumps, other than the resumable ones."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _incompatible_changes(a, b, f"{prefix}{key}.")
        elif a != b and not (prefix == "optim." and key in _RESUMABLE) and prefix != "quantize.":
            changed.append(prefix + key)
    return changed


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config as this version writes it: options added since then take their defaults
    (which is what the checkpoint was trained with), so they do not count as changes."""
    try:
        return TrainConfig.model_validate(saved).model_dump(mode="json")
    except ValueError:
        return saved


def _lr_factor(step: int, total: int, cfg: Any) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    lo = cfg.min_learning_rate / cfg.learning_rate
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac))


class _Validator:
    """Held-out bottom strips: N2N loss (or supervised loss) and PSNR/SSIM vs a reference."""

    def __init__(self, raw: Sequence[np.ndarray], norm: Normalization, splits: Sequence[int],
                 references: Sequence[np.ndarray] | None, mode: str, n_pairs: int, k: int = 1) -> None:
        self.items = held_out_pairs(raw, splits, references, mode, n_pairs, k)
        self.norm = norm
        self.raw_psnr = [psnr(x if x.ndim == 2 else x[-1], r, rng) for x, _, r, rng in self.items if r is not None]

    def __call__(self, net: UNet, device: torch.device) -> dict[str, float]:
        losses, psnrs, ssims = [], [], []
        for x, y, ref, rng in self.items:
            pred = predict(net, self.norm, x, device)
            assert y is not None  # supervised mode always has references (check_stacks)
            losses.append(float(np.mean((self.norm.normalize(pred) - self.norm.normalize(y)) ** 2)))
            if ref is not None:
                psnrs.append(psnr(pred, ref, rng))
                ssims.append(ssim(pred, ref, rng))
        out = {"val_loss": float(np.mean(losses))}
        if psnrs:
            out |= {"val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims)),
                    "val_psnr_raw": float(np.mean(self.raw_psnr))}
        return out


def fit_normalization(config: TrainConfig, stacks: Sequence[np.ndarray]) -> Normalization:
    """The run's normalisation (``data.normalization``), fitted on its training frames."""
    if config.data.normalization == "anscombe":
        nm = config.data.noise_model
        norm = Normalization.fit_anscombe(stacks, gain=nm.gain, offset=nm.offset, read_noise=nm.read_noise)
    else:
        norm = Normalization.fit(stacks)
    log.info("normalisation: %s", norm.describe())
    return norm


def exposure_augment(config: TrainConfig, stacks: Sequence[np.ndarray], norm: Normalization) -> ExposureAugment | None:
    """The run's exposure augmentation (``data.exposure_augment``) with the camera's noise model: the normalisation's
    (anscombe), else ``data.noise_model`` completed by an estimate from the training pairs."""
    dc = config.data
    if dc.exposure_augment is None:
        return None
    if norm.kind == "anscombe":
        gain, offset, read = norm.gain, norm.offset, norm.read_noise
    else:
        nm = dc.noise_model
        est = estimate_noise_model(stacks, gain=nm.gain, offset=nm.offset) if None in (nm.gain, nm.offset,
                                                                                       nm.read_noise) else {}
        gain = nm.gain if nm.gain is not None else est["gain"]
        offset = nm.offset if nm.offset is not None else est["offset"]
        read = nm.read_noise if nm.read_noise is not None else est["read_noise"]
    assert gain is not None and offset is not None and read is not None
    low, high = dc.exposure_augment
    log.info("exposure augmentation: %.0f%% of the pairs at %g to %g times the recorded light",
             100 * dc.exposure_augment_share, low, high)
    return ExposureAugment(low, high, gain, offset, read, share=dc.exposure_augment_share)


@contextlib.contextmanager
def _restore_threads(n: int) -> Iterator[None]:
    """The process's PyTorch thread count as it was, whatever the thread probe chose (a demo serves in-process)."""
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Whole or not at all (the previous checkpoint stays intact); a full disk is a one-line OSError."""
    save_torch(state, path)


def train(
    config: TrainConfig,
    stacks: Sequence[np.ndarray],
    run_dir: str | Path,
    references: Sequence[np.ndarray] | None = None,
    resume: bool = False,
    console: Console | None = None,
    norm: Normalization | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray] | None] | None = None,
) -> TrainResult:
    """Fit a U-Net on ``stacks`` ((T, H, W) arrays) and write weights to ``run_dir``.

    Noise2Noise mode learns frame t → frame t±1; supervised mode learns frame → reference.
    References, when given in N2N mode, are used only to report validation PSNR/SSIM.
    Writes ``checkpoint.pt`` after every epoch (``resume=True`` continues from it) and
    ``model.pt`` (the best validation epoch's weights) at the end.

    ``norm``: the normalisation to use (else fitted on ``stacks``); ``init_state``: weights to start from (a
    fine-tune); ``validation``: other stacks (and references) to validate on, split like ``stacks`` (a bright
    network is validated on sums of frames, at the light it serves).
    """
    check_stacks(stacks, config.mode, references)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    oc, dc = config.optim, config.data
    threads_before = torch.get_num_threads()  # given back at the end (the probe's choice, or num_threads)
    if oc.num_threads:
        torch.set_num_threads(oc.num_threads)
    device = pick_device(oc.device)
    precision = pick_precision(oc.precision, device)
    torch.manual_seed(oc.seed)

    ckpt_path = run_dir / CHECKPOINT_NAME
    ckpt: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"{ckpt_path}: nothing to resume from")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # plain data only, no pickle code
        changed = _incompatible_changes(_with_defaults(ckpt["config"]), config.model_dump(mode="json"))
        if changed:
            raise ValueError(f"{ckpt_path}: was made with a different configuration ({', '.join(changed)} "
                             "changed); resume allows changing only optim.epochs, max_minutes, "
                             "early_stopping_patience, device, num_threads and adapt_threads")
    if ckpt:
        norm = Normalization.from_dict(ckpt["normalization"])
    elif norm is None:
        norm = fit_normalization(config, stacks)

    net = UNet(**config.model.build_kwargs())
    if init_state is not None:
        net.load_state_dict(init_state)
    mult = net.size_multiple
    splits = [split_rows(s.shape[1], dc.val_fraction, mult, dc.patch_size) for s in stacks]
    k = config.model.input_frames
    augment = exposure_augment(config, stacks, norm)
    targets: list[np.ndarray] | None = None
    if config.mode == "supervised" and references:  # camera values when augmenting: normalised per patch after
        targets = [np.asarray(r, np.float32) if augment else norm.normalize(r) for r in references]
    sampler = PairSampler(list(stacks) if augment else [norm.normalize(s) for s in stacks], dc.patch_size, splits,
                          targets, seed=oc.seed, k=k, reverse=dc.reversed_pairs, repeated=dc.repeated_windows,
                          augment=augment, normalize=norm.normalize)
    val_stacks, val_refs = validation if validation is not None else (stacks, references)
    validate = _Validator(val_stacks, norm, splits, val_refs, config.mode, dc.val_pairs, k)

    net.to(device)
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(net.parameters(), lr=oc.learning_rate)
    total = oc.epochs * oc.steps_per_epoch
    pace = Pace(oc.epochs, oc.steps_per_epoch, oc.max_minutes)  # the schedule's horizon: the epochs that fit
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, pace.total_steps(), oc))
    start_epoch, best, best_epoch, history, elapsed_before = 0, math.inf, -1, [], 0.0
    best_state = None
    if ckpt:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        sampler.rng.bit_generator.state = ckpt["sampler_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        start_epoch, best, best_epoch = ckpt["epoch"], ckpt["best_val_loss"], ckpt["best_epoch"]
        history, elapsed_before = ckpt["history"], ckpt["seconds"]
        best_state = ckpt["best_model"]
        log.info("resuming %s at epoch %d", run_dir, start_epoch)
        pace.resume(start_epoch, ckpt.get("epoch_seconds"))
    probe = ThreadProbe.for_machine() if (oc.adapt_threads and device.type == "cpu" and not oc.num_threads
                                          and start_epoch < oc.epochs and torch.get_num_threads() > 1) else None

    console = console or Console(stderr=True)
    pace.restart()
    t0 = pace.t0
    session_step, said_estimate = 0, False
    stopped, epoch, bad_epochs = "completed all epochs", start_epoch, 0
    interrupted = False
    if history:
        bad_epochs = len(history) - 1 - best_epoch
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress, _restore_threads(threads_before):
        task = progress.add_task(f"train {config.mode}", total=total,
                                 completed=start_epoch * oc.steps_per_epoch, status="")
        try:
            for epoch in range(start_epoch, oc.epochs):
                net.train()
                run_loss = 0.0
                for step in range(oc.steps_per_epoch):
                    t_step = time.perf_counter()
                    if probe is not None:
                        probe.before(session_step)
                    xb, yb = sampler.sample(oc.batch_size)
                    x = torch.from_numpy(xb).to(device)
                    y = torch.from_numpy(yb).to(device)
                    if device.type == "cpu":
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        pred = net(x)
                    loss = torch.mean((pred.float() - y) ** 2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    run_loss += float(loss.detach())
                    if probe is not None:
                        probe.after(session_step, time.perf_counter() - t_step)
                    session_step += 1
                    step_s = None if said_estimate else probe.step_seconds() if probe is not None else (
                        (time.perf_counter() - t0) / 10 if session_step == 10 else None)
                    if step_s is not None:  # said once, after the first steps: the whole run (and its limit) here
                        console.print(pace.estimate(step_s, probe.chosen if probe is not None else
                                                    torch.get_num_threads() if device.type == "cpu" else None),
                                      highlight=False, soft_wrap=True)
                        said_estimate = True
                    if step % 10 == 9:
                        progress.update(task, advance=10, status=f"loss {run_loss / (step + 1):.4f}")
                progress.update(task, completed=(epoch + 1) * oc.steps_per_epoch)
                metrics: dict[str, float] = {"epoch": epoch + 1, "train_loss": run_loss / oc.steps_per_epoch,
                           "lr": float(sched.get_last_lr()[0]), **validate(net, device)}
                history.append(metrics)
                if metrics["val_loss"] < best:
                    best, best_epoch, bad_epochs = metrics["val_loss"], epoch, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                else:
                    bad_epochs += 1
                status = f"loss {metrics['train_loss']:.4f} val {metrics['val_loss']:.4f}"
                if "val_psnr" in metrics:
                    status += f" {metrics['val_psnr']:.2f} dB (raw {metrics['val_psnr_raw']:.2f})"
                progress.update(task, status=status)
                log.info("epoch %d %s", epoch + 1, status)
                elapsed = elapsed_before + time.perf_counter() - t0
                out_of_time = pace.epoch_done(epoch)  # (replans the schedule to the epochs that fit)
                if pace.budget_s is not None:
                    progress.update(task, total=pace.total_steps())
                _save_checkpoint(ckpt_path, {
                    "config": config.model_dump(mode="json"), "epoch": epoch + 1,
                    "model": net.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "sampler_rng": sampler.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "normalization": norm.to_dict(),
                    "best_val_loss": best, "best_epoch": best_epoch, "best_model": best_state,
                    "history": history, "seconds": elapsed, "epoch_seconds": pace.epoch_seconds()})
                if bad_epochs >= oc.early_stopping_patience:
                    stopped = f"early stopping: no better validation loss for {bad_epochs} epochs"
                    break
                if out_of_time:
                    stopped = (f"time limit of {format_seconds(pace.budget_s or 0)}: {epoch + 1} of {oc.epochs} "
                               "epochs fitted, the learning rate annealed to end there")
                    break
        except KeyboardInterrupt:
            # what can be resumed is the caller's to say (n2n train prints the command; the demo has none)
            log.info("interrupted after %d complete epoch(s)%s", len(history),
                     f"; the last is saved in {ckpt_path}" if history else "")
            if best_state is None:
                raise
            interrupted = True  # the best epoch so far is saved below: a usable run, marked partial
            stopped = f"interrupted (Ctrl-C) after {len(history)} of {oc.epochs} epochs: a partial run"
    if best_state is None:
        raise RuntimeError("training ended before the first epoch completed; nothing to save")
    final = UNet(**config.model.build_kwargs())
    final.load_state_dict(best_state)
    final.eval()
    save_weights(run_dir, final, norm)
    best_metrics = {k: v for k, v in history[best_epoch].items() if k != "epoch"}
    return TrainResult(run_dir=run_dir, epochs=len(history), steps=len(history) * oc.steps_per_epoch,
                       seconds=elapsed_before + time.perf_counter() - t0, stopped=stopped,
                       best_epoch=best_epoch + 1, metrics=best_metrics, history=history,
                       device=str(device), precision=precision, interrupted=interrupted)
