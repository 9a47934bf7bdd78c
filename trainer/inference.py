"""A trained run's PyTorch network: loading and saving it, and its forward pass during training.

Denoising recorded or live frames is not done here: it goes through the exported model and the
streamer's Denoiser (``trainer.evaluate.denoiser_for``, ``n2n serve``), one path for both."""

from __future__ import annotations

import errno
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamer.core.card import WEIGHTS_NAME, Normalization

from .card import ModelCard, read_card
from .unet import UNet

__all__ = ["NO_SPACE", "WEIGHTS_NAME", "TrainedModel", "load_run", "load_weights", "no_space", "pick_device", "predict",
           "save_torch", "save_weights"]

NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
"""A write refused for room: the disk (or the user's quota) is full, or the file is larger than allowed."""


def no_space(folder: Path, what: str, exc: OSError) -> OSError:
    """The one-line error for a full disk (errno kept)."""
    error = OSError(f"{folder}: no space left to save {what} ({exc.strerror or exc}); free some space there "
                    "(the files already saved are intact)")
    error.errno = exc.errno
    return error


def save_torch(obj: object, path: Path) -> None:
    """``torch.save`` to ``path`` whole or not at all: serialised in memory, written to ``PATH.tmp``, synced and
    renamed, so the file already there stays intact and no ``.tmp`` is left when the write fails. A full disk
    is an OSError naming the folder (torch's own writer reports it as an ``inline_container.cc`` RuntimeError
    without the cause)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            raise no_space(path.parent, path.name, exc) from None
        raise



def pick_device(preference: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class TrainedModel:
    """A U-Net with the normalisation it was trained with, and its card."""

    net: UNet
    normalization: Normalization
    card: ModelCard
    run_dir: Path


def save_weights(run_dir: Path, net: UNet, norm: Normalization) -> Path:
    path = run_dir / WEIGHTS_NAME
    arch = net.architecture
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_torch({"architecture": arch, "state_dict": state, "normalization": norm.to_dict()}, path)
    return path


def load_weights(run_dir: Path) -> tuple[UNet, Normalization]:
    """The network (eval mode) and normalisation saved in ``run_dir/model.pt``."""
    weights = run_dir / WEIGHTS_NAME
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: missing; the run may not have finished training")
    blob = torch.load(weights, map_location="cpu", weights_only=True)
    net = UNet(**blob["architecture"])
    net.load_state_dict(blob["state_dict"])
    return net.eval(), Normalization.from_dict(blob["normalization"])


def load_run(run_dir: str | Path) -> TrainedModel:
    """Load the final weights (``model.pt``) and card (``model.json``) of a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder (make one with `n2n train`)")
    card = read_card(run_dir)
    net, norm = load_weights(run_dir)
    return TrainedModel(net, norm, card, run_dir)


@torch.no_grad()
def predict(
    net: UNet,
    norm: Normalization,
    frames: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
) -> np.ndarray:
    """The network in memory on (H, W) or (N, H, W) frames, float32 in the input's intensity units: the
    validation step of training (there is no export yet). A K-frame network (``net.input_frames`` > 1) takes
    one window (K, H, W) or (N, K, H, W) and returns (H, W) or (N, H, W)."""
    k = getattr(net, "input_frames", 1)
    single = frames.ndim == (2 if k == 1 else 3)
    stack = frames[None] if single else frames
    if stack.ndim != (3 if k == 1 else 4) or (k > 1 and stack.shape[1] != k):
        want = "a (H, W) frame or (N, H, W) stack" if k == 1 else f"a ({k}, H, W) window or (N, {k}, H, W) windows"
        raise ValueError(f"Expected {want}, got shape {frames.shape}")
    device = torch.device(device)
    was_training = net.training
    net.eval().to(device)
    out = np.empty((len(stack), *stack.shape[-2:]), dtype=np.float32)
    for i in range(0, len(stack), batch_size):
        part = norm.normalize(stack[i : i + batch_size])
        x = torch.from_numpy(part[:, None] if k == 1 else part).to(device)
        out[i : i + batch_size] = norm.denormalize(net(x)[:, 0].float().cpu().numpy())
    net.train(was_training)
    return out[0] if single else out
