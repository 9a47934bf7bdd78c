"""From noisy frames to an exported denoiser: pairs, U-Net, training, evaluation, export."""

from .card import CARD_NAME, ModelCard, read_card
from .config import (
    ConfigError,
    EvaluateConfig,
    ExportConfig,
    SimulateConfig,
    TrainConfig,
    load_config,
    save_config,
)
from .evaluate import denoiser_for, evaluate, save_figure
from .export import ExportError, export_onnx, export_torchscript
from .inference import TrainedModel, load_run
from .loop import TrainResult, train
from .metrics import data_range_of, psnr, ssim
from .normalization import Normalization
from .pairs import PairSampler, n2n_pair_indices
from .unet import UNet

__all__ = [
    "CARD_NAME", "ConfigError", "EvaluateConfig", "ExportConfig", "ExportError", "Normalization",
    "PairSampler", "SimulateConfig", "TrainConfig", "TrainResult", "TrainedModel", "UNet",
    "data_range_of", "denoiser_for", "evaluate", "export_onnx", "export_torchscript", "load_config",
    "load_run", "n2n_pair_indices", "psnr", "read_card", "save_config", "save_figure", "ssim",
    "train", "ModelCard",
]
