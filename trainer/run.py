"""A training run end to end: gather frames, train, export ONNX, write the model card."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from streamer.sources import read_stack, simulate_stack

from .bright import bright_refusal, main_config, train_bright
from .card import ModelCard, Quantization, add_artifact, file_digest, versions
from .config import TrainConfig, save_config
from .export import ONNX_NAME, TORCHSCRIPT_NAME, export_onnx, export_torchscript
from .inference import NO_SPACE, load_weights, no_space
from .loop import TrainResult, train
from .pairs import split_rows

__all__ = ["TRAIN_DTYPES", "TrainingInterrupted", "check_dtype", "gather_data", "quantize_run", "run_training",
           "training_data"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C after at least one epoch: the best epoch so far was exported (``card``: a usable run whose
    ``training.partial`` is true; INT8 and the gain estimate skipped). Still a KeyboardInterrupt, so a caller
    that stops on Ctrl-C stops."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__(f"interrupted after {card.training.get('epochs')} epoch(s); the best so far is exported")
        self.card = card

log = logging.getLogger("n2n.trainer")

TRAIN_DTYPES = ("uint8", "uint16", "float32")
"""Pixel types taken without asking: a camera's frames (8 or 16 bit) and float32; others need
``data.accept_dtype: true``."""


def check_dtype(path: Path, array: np.ndarray, accept: bool) -> None:
    """Refuse a stack of another pixel type than :data:`TRAIN_DTYPES` unless ``accept`` (one line: the file,
    the type found, the types expected)."""
    if array.dtype.name in TRAIN_DTYPES or accept:
        return
    raise ValueError(f"{path}: expected frames of {', '.join(TRAIN_DTYPES[:-1])} or {TRAIN_DTYPES[-1]}, got "
                     f"{array.dtype.name}; a model serves only frames of the type it was trained on, and a stack of "
                     f"{array.dtype.name} is usually a processed copy, not the camera's frames: convert it, or train "
                     "on it as it is with --set data.accept_dtype=true")


_TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter", "file write failed")


@contextlib.contextmanager
def _room(run_dir: Path) -> Iterator[None]:
    """A full disk while training or exporting: one line naming the run folder, no ``*.tmp`` left behind (what
    was saved before, e.g. the last checkpoint, is intact)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        _drop_partial(run_dir)
        if str(exc).startswith(f"{run_dir}: no space left"):
            raise
        raise no_space(run_dir, "the run", exc) from None
    except RuntimeError as exc:  # torch's writer (torch.jit.save, an export) hides the OS's reason
        if not any(s in str(exc) for s in _TORCH_WRITE_FAILED):
            raise
        _drop_partial(run_dir)
        error = OSError(f"{run_dir}: could not write the run's files (no space left on the device? torch: "
                        f"{' '.join(str(exc).split())[:200]})")
        error.errno = errno.EIO
        raise error from None


def _drop_partial(run_dir: Path) -> None:
    for tmp in run_dir.glob("*.tmp"):
        tmp.unlink(missing_ok=True)


def _describe_file(path: Path, array: np.ndarray) -> dict[str, Any]:
    return {"path": str(path.resolve()), "sha256": file_digest(path), "shape": list(array.shape),
            "dtype": str(array.dtype)}


def gather_data(
    config: TrainConfig,
    data: Sequence[Path],
    references: Sequence[Path],
    run_dir: Path,
) -> tuple[list[np.ndarray], list[np.ndarray] | None, dict[str, Any]]:
    """Stacks, references and a provenance record, from files or from the simulated camera.

    Simulated frames and their truth are saved in ``run_dir`` (nothing the model was trained
    on is lost); the truth is the reference for validation metrics.
    """
    if config.data.source == "simulated" and not data:
        cam = config.data.camera
        log.info("grabbing %d frames of %dx%d from the simulated camera (%.1f ms exposure)",
                 config.data.frames, cam.height, cam.width, cam.exposure_ms)
        raw, truth = simulate_stack(cam, config.data.frames)
        import tifffile

        tifffile.imwrite(run_dir / "frames.tif", raw, ome=True, metadata={"axes": "TYX"})
        tifffile.imwrite(run_dir / "truth.tif", truth, ome=True, metadata={"axes": "TYX"})
        prov = {"source": "simulated", "camera": cam.model_dump(mode="json"), "frames": config.data.frames,
                "saved": ["frames.tif", "truth.tif"]}
        return [raw], [truth], prov
    if not data:
        raise ValueError("No training data: give one or more stacks with --data, or set data.source: simulated")
    if references and len(references) != len(data):
        raise ValueError(f"Expected one --reference per --data stack: {len(data)} stacks, {len(references)} references")
    min_frames = 2 if config.mode == "n2n" else 1
    stacks = []
    for path in data:  # each refused as soon as it is read
        stacks.append(read_stack(path, min_frames=min_frames, allow_2d=False, channel=config.data.channel,
                                 ome_z_as_time=False))
        check_dtype(Path(path), stacks[-1], config.data.accept_dtype)
    refs = [_read_reference(p, config.data.channel) for p in references] if references else None
    prov = {"source": "files", "data": [_describe_file(p, s) for p, s in zip(data, stacks)],
            "references": [_describe_file(p, r) for p, r in zip(references, refs)] if refs else [],
            "references_used_for": ("targets" if config.mode == "supervised"
                                    else "validation metrics only" if refs else None)}
    return stacks, refs, prov


def _read_reference(path: Path, channel: str | None) -> np.ndarray:
    """A reference, of the training channel where it has several (one channel: as it is)."""
    try:
        return read_stack(path, channel=channel)
    except ValueError as exc:
        if channel is None or "expected a file with a channel axis" not in str(exc):
            raise
        return read_stack(path)


def run_training(
    config: TrainConfig,
    run_dir: Path,
    data: Sequence[Path] = (),
    references: Sequence[Path] = (),
    resume: bool = False,
    console: Console | None = None,
    before_training: Callable[[], None] | None = None,
) -> ModelCard:
    """Train into ``run_dir`` and leave ``model.pt``, ``model.onnx``, ``model.ts`` and ``model.json`` there.
    ``before_training``: called once the data is read, before anything of the new run is written but its frames
    (``n2n train --overwrite`` clears the old run there, so a failed start keeps it).

    Ctrl-C after the first epoch exports the best epoch so far and raises :class:`TrainingInterrupted`; a run that
    fails or is interrupted before its first epoch leaves no folder it made itself."""
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _room(run_dir):
            return _run_training(config, run_dir, data, references, resume, console, before_training)
    except TrainingInterrupted:
        raise
    except BaseException:
        if made and not (run_dir / "checkpoint.pt").exists():  # a failed start leaves nothing
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _run_training(config: TrainConfig, run_dir: Path, data: Sequence[Path], references: Sequence[Path],
                  resume: bool, console: Console | None,
                  before_training: Callable[[], None] | None = None) -> ModelCard:
    stacks, refs, provenance = gather_data(config, data, references, run_dir)
    if before_training is not None:
        before_training()
    refusal = bright_refusal(config, stacks)
    if refusal:  # (a preset's bright network, with --target supervised, a mean/std normalisation or a short stack)
        log.warning("no bright network: %s; one network serves every frame", refusal)
    save_config(config, run_dir / "config.yaml")
    result = train(main_config(config, stacks), stacks, run_dir, references=refs, resume=resume, console=console)
    card = _export(config, run_dir, stacks, provenance, result)
    if result.interrupted:  # usable now; INT8, the gain estimate and a bright network wait for the run to be finished
        raise TrainingInterrupted(card)
    if config.quantize.int8:
        quantize_run(run_dir, config, stacks, refs)
        card = ModelCard.load(run_dir)
    card = _estimate_gain(run_dir, config, stacks, card)
    if config.data.bright_expert is not None and not refusal:
        card = train_bright(config, run_dir, stacks, refs, provenance, console)
    return card


def _export(config: TrainConfig, run_dir: Path, stacks: Sequence[np.ndarray], provenance: dict[str, Any],
            result: TrainResult, extra: dict[str, Any] | None = None) -> ModelCard:
    """The trained weights' card (``model.json``) and float exports (ONNX, TorchScript) in ``run_dir``."""
    net, norm = load_weights(run_dir)
    card = ModelCard.model_validate({
        "name": run_dir.name,
        "architecture": {"name": "unet2d", **net.architecture, "in_channels": 1, "out_channels": 1,
                         "flops_per_pixel": net.flops_per_pixel(),
                         "parameters": sum(p.numel() for p in net.parameters())},
        "size_multiple": net.size_multiple,
        "normalization": norm.to_dict(),
        "input": {"dtype": str(stacks[0].dtype), "shape_hint": list(stacks[0].shape[1:])},
        # frames up to 2048 px run whole; larger ones are tiled with a margin of the U-Net's reach
        "tile": {"size": 2048, "overlap": net.reach},
        "training": {"mode": config.mode, "data": provenance, "config": config.model_dump(mode="json"),
                     "epochs": result.epochs, "best_epoch": result.best_epoch, "steps": result.steps,
                     "seconds": round(result.seconds, 1), "stopped": result.stopped,
                     "device": result.device, "precision": result.precision,
                     **({"partial": True} if result.interrupted else {}), **(extra or {})},
        "metrics": result.metrics,
        "history": result.history,
        "versions": versions(),
    })
    card.save(run_dir)
    add_artifact(run_dir, export_onnx(net, run_dir / ONNX_NAME, opset=config.onnx_opset))
    return add_artifact(run_dir, export_torchscript(net, run_dir / TORCHSCRIPT_NAME))


def _estimate_gain(run_dir: Path, config: TrainConfig, stacks: Sequence[np.ndarray], card: ModelCard) -> ModelCard:
    """The served model's gain over raw and a Gaussian filter's, estimated on the held-out rows without a
    reference (:mod:`trainer.gain`), into the card's metrics; a failure is logged, never fails the training."""
    from .gain import estimate_gain

    try:
        splits = [split_rows(s.shape[1], config.data.val_fraction, card.size_multiple, config.data.patch_size)
                  for s in stacks]
        gain = estimate_gain(run_dir, stacks, splits, card.input_frames, max(config.data.val_pairs, 32))
    except Exception as exc:  # an engine that does not run here, a stack of one frame: the model is still good
        log.warning("could not estimate the gain over raw (%s: %s)", type(exc).__name__, exc)
        return card
    log.info("estimated gain over raw: %+.1f dB (Gaussian filter, sigma %.2g: %+.1f dB) on %d held-out pairs, "
             "%s at %s", gain["gain_db_model"], gain["gaussian_sigma"], gain["gain_db_gaussian"], gain["pairs"],
             gain["engine"], gain["precision"])
    card.metrics.update({"estimated_gain_db": round(gain["gain_db_model"], 3),
                         "estimated_gain_db_gaussian": round(gain["gain_db_gaussian"], 3),
                         "estimated_gaussian_sigma": gain["gaussian_sigma"]})
    card.save(run_dir)
    return card


def quantize_run(run_dir: Path, config: TrainConfig, stacks: Sequence[np.ndarray],
                 refs: Sequence[np.ndarray] | None, max_loss_db: float | None = None) -> Quantization:
    """INT8 export of a trained run: calibrated on its training rows, checked on its held-out rows
    (the same split as training)."""
    from .quantize import quantize_int8

    q = config.quantize
    multiple = ModelCard.load(run_dir).size_multiple
    splits = [split_rows(s.shape[1], config.data.val_fraction, multiple, config.data.patch_size) for s in stacks]
    return quantize_int8(run_dir, stacks, refs, splits, config.mode, config.data.val_pairs,
                         max_loss_db if max_loss_db is not None else q.max_loss_db,
                         q.calibration_patches, q.patch_size, seed=config.optim.seed, scales=q.exposure_scales)


def training_data(run_dir: Path) -> tuple[TrainConfig, list[np.ndarray], list[np.ndarray] | None]:
    """The config, frames and references a run was trained on, read back from its card's provenance
    (files checked against their recorded sha256; simulated frames from the run folder)."""
    from .config import load_config

    card = ModelCard.load(run_dir)
    config = load_config(TrainConfig, run_dir / "config.yaml")
    prov = card.training.get("data", {})
    if prov.get("source") == "simulated":
        stacks = [read_stack(run_dir / "frames.tif", min_frames=2, allow_2d=False)]
        return config, stacks, [read_stack(run_dir / "truth.tif")]

    def read(entries: list[dict[str, Any]], **kwargs: Any) -> list[np.ndarray]:
        out = []
        for e in entries:
            path = Path(e["path"])
            if not path.exists():
                raise FileNotFoundError(f"{path}: the run was trained on it, but it is gone")
            if file_digest(path) != e["sha256"]:
                raise ValueError(f"{path}: changed since the run was trained on it (sha256 differs)")
            out.append(read_stack(path, **kwargs))
        return out

    stacks = read(prov.get("data", []), min_frames=2 if config.mode == "n2n" else 1, allow_2d=False)
    if not stacks:
        raise ValueError(f"{run_dir / 'model.json'}: records no training data to calibrate on")
    refs = read(prov.get("references", []))
    return config, stacks, refs or None
