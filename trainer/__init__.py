"""From noisy frames to an exported denoiser: pairs, the U-Net family, training, evaluation, export, INT8.

Names are imported on first use (``from trainer import train`` loads PyTorch; ``from trainer.config
import TrainConfig`` does not), so that ``n2n --help`` and config checks stay quick."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CARD_NAME": "card", "ModelCard": "card", "read_card": "card",
    "ConfigError": "config", "EvaluateConfig": "config", "ExportConfig": "config", "SimulateConfig": "config",
    "TrainConfig": "config", "load_config": "config", "save_config": "config",
    "denoiser_for": "evaluate", "evaluate": "evaluate", "save_figure": "evaluate",
    "ExportError": "export", "export_onnx": "export", "export_torchscript": "export",
    "TrainedModel": "inference", "load_run": "inference",
    "TrainResult": "loop", "train": "loop",
    "data_range_of": "metrics", "psnr": "metrics", "ssim": "metrics",
    "PairSampler": "pairs", "n2n_pair_indices": "pairs",
    "UNet": "unet",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
