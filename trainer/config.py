"""Configuration of the trainer's jobs: pydantic v2 models read from YAML files in ``configs/``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from streamer.config import CONFIG_VERSION, ConfigError, _Strict, _Versioned, load_config, save_config
from streamer.sources.simulated import SimulatedCameraConfig

__all__ = [
    "CONFIG_VERSION",
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "ExportConfig",
    "EvaluateConfig",
    "SimulateConfig",
    "load_config",
    "save_config",
]


class ModelConfig(_Strict):
    """CARE-style U-Net architecture."""

    depth: int = Field(2, ge=1, le=5)
    """Number of pooling levels; frames divisible by 2**depth need no padding."""
    base_filters: int = Field(32, ge=4, le=256)
    """Channels at full resolution, doubled at each level."""
    residual: bool = True
    """Predict a correction added to the input (CARE's residual output)."""


class DataConfig(_Strict):
    """Where frames come from and how training pairs are drawn."""

    source: Literal["files", "simulated"] = "files"
    """'files': TIFF stacks given with --data; 'simulated': frames grabbed from the simulated camera."""
    camera: SimulatedCameraConfig = SimulatedCameraConfig()
    """Simulated camera used when source is 'simulated'."""
    frames: int = Field(100, ge=2)
    """Frames grabbed from the simulated camera."""
    patch_size: int = Field(64, ge=16, le=1024)
    """Side of the square training patches (a multiple of 2**depth)."""
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    """Fraction of each frame's rows (at the bottom) held out for validation."""
    val_pairs: int = Field(8, ge=1)
    """Held-out pairs per stack used for validation (spread evenly in time)."""


class OptimConfig(_Strict):
    """Optimiser, schedule and stopping."""

    batch_size: int = Field(16, ge=1)
    """Patches per step."""
    epochs: int = Field(40, ge=1)
    """Epochs; validation, checkpoint and early-stopping check after each."""
    steps_per_epoch: int = Field(100, ge=1)
    """Optimiser steps per epoch."""
    learning_rate: float = Field(1e-3, gt=0)
    """Initial Adam learning rate."""
    min_learning_rate: float = Field(1e-5, ge=0)
    """Learning rate reached at the end of the cosine decay."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warm-up steps before the cosine decay."""
    early_stopping_patience: int = Field(10, ge=1)
    """Stop after this many epochs without a better validation loss."""
    max_minutes: float | None = Field(None, gt=0)
    """Stop (cleanly, with a checkpoint) after this much wall time; None: no limit."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training arithmetic. 'auto': bf16 autocast where the CPU/GPU supports it, else fp32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' picks CUDA when available."""
    seed: int = 0
    """Seeds weights, patch sampling and augmentation."""
    num_threads: int | None = Field(None, ge=1)
    """CPU threads for PyTorch; None: all cores."""

    @model_validator(mode="after")
    def _lr_order(self) -> OptimConfig:
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"min_learning_rate ({self.min_learning_rate}) must not exceed "
                f"learning_rate ({self.learning_rate})"
            )
        return self


class TrainConfig(_Versioned):
    """``n2n train``: fit a denoiser on noisy frames."""

    mode: Literal["n2n", "supervised"] = "n2n"
    """'n2n': consecutive noisy frames as input/target; 'supervised' (CARE): noisy → reference."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    onnx_opset: int = Field(18, ge=18)
    """ONNX opset of the model.onnx written after training (18 is the oldest PyTorch's exporter writes)."""

    @model_validator(mode="after")
    def _patch_fits_model(self) -> TrainConfig:
        m = 2**self.model.depth
        if self.data.patch_size % m:
            raise ValueError(
                f"data.patch_size ({self.data.patch_size}) must be a multiple of "
                f"2**model.depth = {m}"
            )
        return self


class ExportConfig(_Versioned):
    """``n2n export``: write the trained model in a deployable format."""

    format: Literal["onnx", "torchscript"] = "onnx"
    """Output format."""
    opset: int = Field(18, ge=18)
    """ONNX opset (18 is the oldest PyTorch's exporter writes; a newer one must be supported by it)."""
    max_rel_error: float = Field(1e-4, gt=0)
    """Refuse the export if ‖exported − PyTorch‖ / ‖PyTorch‖ on a random frame exceeds this."""
    check_size: int = Field(256, ge=16)
    """Side of the random frame used for the parity check."""


class EvaluateConfig(_Versioned):
    """``n2n evaluate``: denoise a stack and score it against a reference."""

    gaussian_sigmas: list[float] = Field(
        default_factory=lambda: [0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0]
    )
    """Sigmas tried for the Gaussian-filter baseline; the best (by PSNR) is reported."""
    data_range: float | None = Field(None, gt=0)
    """PSNR/SSIM data range; None: the reference dtype's range for integer references
    (255 for uint8), max − min of the reference for float references."""
    max_frames: int | None = Field(None, ge=1)
    """Evaluate only the first N frames; None: all."""
    batch_size: int = Field(4, ge=1)
    """Frames denoised at once."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device for the model."""


class SimulateConfig(_Versioned):
    """``n2n simulate``: record frames (and their truth) from the simulated camera."""

    camera: SimulatedCameraConfig = SimulatedCameraConfig()
    frames: int = Field(50, ge=1)
    """Number of frames to record."""
