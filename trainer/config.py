"""Configuration of the trainer's jobs: pydantic v2 models read from YAML files in ``configs/``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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

CONFIG_VERSION = 1


class ConfigError(ValueError):
    """A configuration file is missing, malformed or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class _Versioned(_Strict):
    version: Literal[1] = 1
    """Configuration schema version."""


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


C = TypeVar("C", bound=BaseModel)


def load_config(cls: type[C], path: str | Path | None, **overrides: object) -> C:
    """Load ``cls`` from a YAML file (or defaults), apply dotted-key overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at top level, got {type(loaded).__name__}")
        data = loaded
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            if p not in node:
                node[p] = {}
            child = node[p]
            if not isinstance(child, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"{path}: '{where}' must be a mapping to set {key}, got {child!r}")
            node = child
        node[leaf] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        where = f"{path}" if path is not None else "defaults"
        raise ConfigError(f"invalid {cls.__name__} ({where}):\n{exc}") from None


def save_config(config: BaseModel, path: str | Path) -> None:
    """Write a config as YAML that :func:`load_config` reads back unchanged."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
