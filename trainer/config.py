"""Configuration of the trainer's jobs: pydantic v2 models read from YAML files in ``configs/``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from streamer.core.choices import Device, EngineChoice, PrecisionChoice
from streamer.core.config import CONFIG_VERSION, ConfigError, Strict, Versioned, load_config, save_config
from streamer.core.history import MOTION_THRESHOLD
from streamer.sources.simulated import SimulatedCameraConfig

__all__ = [
    "CONFIG_VERSION",
    "ConfigError",
    "FAST_MODEL",
    "BrightExpertConfig",
    "ROBUST_DATA",
    "ModelConfig",
    "QuantizeConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "ExportConfig",
    "EvaluateConfig",
    "SimulateConfig",
    "load_config",
    "save_config",
]


class ModelConfig(Strict):
    """The U-Net family (trainer/unet.py): from the quality default to real-time CPU networks."""

    depth: int = Field(2, ge=1, le=5)
    """Number of pooling levels; frames divisible by size_multiple (2**depth, ×2 with the unshuffle stem)
    need no padding."""
    base_filters: int = Field(32, ge=4, le=256)
    """Channels at full resolution, doubled at each level (unless filters is given)."""
    filters: list[int] | None = None
    """Channels per level, full resolution first, depth + 1 values (the last is the bottom);
    null: base_filters doubled at each level. Few at full resolution make a network fast on a CPU."""
    block: Literal["conv", "dsconv"] = "conv"
    """'conv': two 3×3 convolutions per level; 'dsconv': depthwise-separable (3×3 depthwise + 1×1)."""
    skip: Literal["concat", "add", "project"] = "concat"
    """How the decoder joins the encoder's features: 'concat' (CARE); 'project' (1×1 projection of the coarser
    level to this level's channels, then concat: slimmer full-resolution tensors); 'add' (projection, then sum)."""
    stem: Literal["none", "unshuffle"] = "none"
    """'unshuffle': fold 2×2 pixels into 4 channels, run the U-Net at half resolution (about 4× cheaper)."""
    residual: bool = True
    """Predict a correction added to the input (CARE's residual output)."""
    input_frames: int = Field(1, ge=1, le=16, exclude_if=lambda v: v == 1)
    """K: consecutive frames the network sees (t−K+1 … t) to denoise frame t; causal, no look-ahead. Trained on
    frames t−K+1 … t → frame t+1 (Noise2Noise); before K frames exist the oldest is repeated (streamer/core/history.py).
    1: the single-frame network."""
    frame_stem: int = Field(0, ge=0, le=64, exclude_if=lambda v: v == 0)
    """Channels of a 3×3 convolution shared by the K frames (same weights on each) before the first level mixes
    them; 0: the K frames enter the first convolution as its channels."""
    residual_frames: Literal["newest", "mix"] = Field("newest", exclude_if=lambda v: v == "newest")
    """What the residual output adds to: 'newest' (frame t) or 'mix' (a learned weighted sum of the K frames,
    initialised to their mean; with a thin first level it keeps the older frames in use)."""
    bias: bool = Field(True, exclude_if=lambda v: v is True)
    """Biases in the convolutions. false: a bias-free network, whose output scales with its input (f(c·x) = c·f(x));
    with the ``anscombe`` normalisation a frame brighter or dimmer than the training frames is then the training
    case at another noise level, which bias-free networks handle (Mohan et al. 2020): exposure-robust."""

    @model_validator(mode="after")
    def _filters_fit_depth(self) -> ModelConfig:
        if self.filters is not None:
            if len(self.filters) != self.depth + 1:
                raise ValueError(f"model.filters needs depth + 1 = {self.depth + 1} values (one per level and "
                                 f"the bottom), got {len(self.filters)}: {self.filters}")
            if min(self.filters) < 1 or max(self.filters) > 1024:
                raise ValueError(f"model.filters must lie in 1..1024, got {self.filters}")
        return self

    @property
    def size_multiple(self) -> int:
        """Frame sizes divisible by this need no padding inside the network."""
        return 2**self.depth * (2 if self.stem == "unshuffle" else 1)

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`trainer.unet.UNet`."""
        return self.model_dump()


#: the real-time preset (configs/train_fast.yaml, n2n demo): chosen on the quality/speed frontier (docs/results.md)
FAST_MODEL = ModelConfig(depth=3, filters=[4, 16, 32, 64])


class NoiseModelConfig(Strict):
    """A camera's noise: ``var(ADU) = gain·(ADU − offset) + read_noise²`` (from its datasheet or a photon-transfer
    measurement); null: estimated from the training frames (consecutive frames of a still field)."""

    gain: float | None = Field(None, gt=0)
    """ADU per photo-electron (the inverse of a datasheet's e-/ADU conversion gain)."""
    offset: float | None = None
    """ADU with no light (the camera's bias)."""
    read_noise: float | None = Field(None, ge=0)
    """Read noise in ADU rms (a datasheet's e- rms times the gain)."""


#: the exposure-robust data settings of the shipped presets (configs/train*.yaml, n2n demo): see docs/training.md
ROBUST_DATA: dict[str, Any] = {"normalization": "anscombe", "exposure_augment": [0.25, 16.0]}


class BrightExpertConfig(Strict):
    """A second network for frames much brighter than the training frames (a longer exposure, more laser power, frame
    averaging): fine-tuned from the trained network on pairs remade at ``band`` times the recorded light only (sums of
    consecutive frames), and served for every frame at least ``band[0]`` times as bright as the training frames. One
    network trained over the whole range of exposures serves the bright end about 1 dB below a network trained at it
    (docs/results.md); this one closes that gap for a share of the training time."""

    band: list[float] = Field(default_factory=lambda: [3.0, 16.0], min_length=2, max_length=2)
    """[low, high]: the light of its training pairs, in multiples of the recorded; frames at least ``low`` times as
    bright as the training frames (their 99.5th percentile above the offset) are served by it."""
    epochs_share: float = Field(0.3, gt=0, le=1)
    """Its epochs (and, with a time budget, its share of the time) as a share of the network's: optim.epochs × this,
    at least 1."""

    @field_validator("band")
    @classmethod
    def _bright_band(cls, v: list[float]) -> list[float]:
        if not 1.5 <= v[0] <= v[1]:
            raise ValueError(f"expected bright_expert.band [low, high] with 1.5 <= low <= high (brighter than the "
                             f"training frames: sums of 2 or more of them), got {v}")
        return v


class DataConfig(Strict):
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
    reversed_pairs: bool = Field(True, exclude_if=lambda v: v is True)
    """With model.input_frames > 1: also train on time-reversed windows (frames t+K−1 … t, newest last, → frame
    t−1), twice the pairs (Noise2Noise pairs of one frame already go both ways)."""
    repeated_windows: float = Field(0.0, ge=0.0, le=1.0, exclude_if=lambda v: v == 0.0)
    """With model.input_frames > 1: the fraction of training windows whose K frames are one frame repeated (the
    frame next to the target), as the streamer sends a frame alone (the first of a stream, or one that moved),
    so that the model's answer for a frame alone is as good as a single-frame model's. 0: none."""
    normalization: Literal["meanstd", "anscombe"] = "meanstd"
    """What the network sees. 'anscombe': the camera's noise stabilised (generalised Anscombe transform, noise model
    from ``noise_model`` or estimated from the training pairs) and zero where no light falls: with a bias-free network
    (model.bias: false) a model trained at one exposure serves others. 'meanstd': the training frames' mean and std."""
    noise_model: NoiseModelConfig = NoiseModelConfig()
    """The camera's noise model (ADU) for 'anscombe' and exposure_augment; what is not given is estimated from the
    training pairs."""
    exposure_augment: list[float] | None = Field(None, min_length=2, max_length=2)
    """[low, high]: a share of the training pairs (exposure_augment_share) remade at an exposure between low and high
    times the recorded one
    (dimmer: photo-electrons thinned; brighter: sums of consecutive frames; trainer/pairs.py ExposureAugment), so
    the model serves frames dimmer and brighter than its training frames. null: the recorded exposure only."""

    exposure_augment_share: float = Field(0.5, gt=0, le=1)
    """The share of training pairs remade at another exposure (the rest stay at the recorded one)."""
    bright_expert: BrightExpertConfig | None = Field(None, exclude_if=lambda v: v is None)
    """A second network for frames much brighter than the training frames (see :class:`BrightExpertConfig`);
    null: one network serves every frame. It needs mode n2n and the anscombe normalisation: with another (a preset
    trained with --target supervised, or data.normalization meanstd), training says so and makes one network."""
    channel: str | None = Field(None, exclude_if=lambda v: v is None)
    """The channel to train on in multi-channel files (``n2n train --channel``: an index or an OME channel name);
    None: single-channel files only (several channels are refused: they are not consecutive frames)."""
    accept_dtype: bool = Field(False, exclude_if=lambda v: v is False)
    """Train on stacks of a pixel type other than a camera's (uint8, uint16) or float32: float64, signed integers
    (int8, int16, int32), uint32, float16. Refused by default: such a stack is usually a processed copy (a
    float64 export, a wrapped int8 conversion), and the model applies only to frames of the type it was trained
    on."""

    @field_validator("exposure_augment")
    @classmethod
    def _augment_range(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not 0 < v[0] <= 1 <= v[1]:
            raise ValueError(f"expected exposure_augment [low, high] with 0 < low <= 1 <= high, got {v}")
        return v


class OptimConfig(Strict):
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
    """Wall-clock budget of a training session (``n2n train --minutes``; a resumed run's counts from its resume):
    after each epoch the epochs that still fit become the learning rate's horizon, and no epoch starts that would
    end past it (the first always runs); None: no limit."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training arithmetic. 'auto': bf16 autocast where the CPU/GPU supports it, else fp32."""
    device: Device = "auto"
    """'auto' picks CUDA when available."""
    seed: int = 0
    """Seeds weights, patch sampling and augmentation."""
    num_threads: int | None = Field(None, ge=1)
    """CPU threads for PyTorch; None: all cores (or the fastest count, with adapt_threads)."""
    adapt_threads: bool = False
    """With num_threads None: time the first steps at all cores, half and one, and train at the fastest (on a busy
    machine fewer threads are often twice as fast), timed again when the load changes (a block of steps 1.5 times
    slower or faster); the choice is logged. Off by default: a seeded run then gives the
    same weights on every run; on in the presets and the demo."""

    @model_validator(mode="after")
    def _lr_order(self) -> OptimConfig:
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"min_learning_rate ({self.min_learning_rate}) must not exceed "
                f"learning_rate ({self.learning_rate})"
            )
        return self


class QuantizeConfig(Strict):
    """INT8 for OpenVINO (NNCF post-training quantization), made after training and kept only if it
    passes its check on the held-out rows (trainer/quantize.py)."""

    int8: bool = True
    """Try an INT8 export after training (needs nncf; skipped with a note without it)."""
    max_loss_db: float = Field(0.1, gt=0)
    """Keep it only if it loses at most this much against float32 on the held-out validation rows."""
    calibration_patches: int = Field(32, ge=1, le=1000)
    """Patches of the training rows that calibrate the quantization ranges."""
    patch_size: int = Field(256, ge=16)
    """Side of the calibration patches (smaller frames give smaller patches)."""
    exposure_scales: list[float] = Field(default_factory=lambda: [1.0, 2.0], min_length=1)
    """The training frames' light (above the camera's offset) scaled by each factor, as exposure or laser power
    would: INT8 is calibrated on all of them and kept only if it passes its check at each. Frames whose values fall
    outside that range, or whose brightest pixel is dimmer than the dimmest frame at the lowest factor, are served
    by the float32 model (counted), never a clipped or coarsely quantised one. The wider the range, the coarser INT8's
    steps at 1x: on the simulator's real-time model 1-2x kept INT8 within 0.05 dB at both, 1-4x lost 0.16 dB at 1x,
    1/4-4x 0.43 dB at 1/4x."""

    @field_validator("exposure_scales")
    @classmethod
    def _positive_scales(cls, v: list[float]) -> list[float]:
        if any(not x > 0 for x in v):
            raise ValueError(f"expected positive exposure scales, got {v}")
        return sorted(v)


class TrainConfig(Versioned):
    """``n2n train``: fit a denoiser on noisy frames."""

    mode: Literal["n2n", "supervised"] = "n2n"
    """'n2n': consecutive noisy frames as input/target; 'supervised' (CARE): noisy → reference."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    onnx_opset: int = Field(18, ge=18)
    """ONNX opset of the model.onnx written after training (18 is the oldest PyTorch's exporter writes)."""
    quantize: QuantizeConfig = QuantizeConfig()

    @model_validator(mode="after")
    def _patch_fits_model(self) -> TrainConfig:
        m = self.model.size_multiple
        if self.data.patch_size % m:
            raise ValueError(
                f"data.patch_size ({self.data.patch_size}) must be a multiple of the model's size multiple "
                f"{m} (2**model.depth{', ×2 for the unshuffle stem' if self.model.stem == 'unshuffle' else ''})"
            )
        return self


class ZooExportConfig(Strict):
    """``n2n export --format bioimageio``: the package's metadata (trainer/zoo.py)."""

    out: str | None = None
    """The package (.zip); null: ``<run folder>/<run name>.bioimageio.zip``."""
    sample: str | None = None
    """A frame or stack (TIFF) whose first frames are the package's test input; null: the run's first training
    stack, where its card says it is."""
    authors: list[str] = Field(default_factory=list)
    """The model's authors (the zoo asks for at least one); empty: this computer's user name."""
    license: str = "CC-BY-4.0"
    """SPDX identifier of the model's licence (the zoo's usual one: CC-BY-4.0)."""
    name: str | None = None
    """The package's name in the zoo; null: 'n2n-live <run name>'."""


class ExportConfig(Versioned):
    """``n2n export``: write the trained model in a deployable format."""

    format: Literal["onnx", "torchscript", "int8", "bioimageio"] = "onnx"
    """Output format; 'int8': OpenVINO INT8 (NNCF), calibrated on the run's training frames and kept only
    if it passes its check on their held-out rows (see quantize); 'bioimageio': a BioImage Model Zoo package
    (docs/zoo.md), see bioimageio."""
    opset: int = Field(18, ge=18)
    """ONNX opset (18 is the oldest PyTorch's exporter writes; a newer one must be supported by it)."""
    max_rel_error: float = Field(1e-4, gt=0)
    """Refuse the export if ‖exported − PyTorch‖ / ‖PyTorch‖ on a random frame exceeds this."""
    check_size: int = Field(256, ge=16)
    """Side of the random frame used for the parity check."""
    quantize: QuantizeConfig = QuantizeConfig()
    """For format int8."""
    bioimageio: ZooExportConfig = ZooExportConfig()
    """For format bioimageio."""


class EvaluateConfig(Versioned):
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
    """Frames between progress updates (frames are denoised one at a time, as a live server does)."""
    engine: EngineChoice = "auto"
    """The serving engine that denoises (the same Denoiser as n2n serve: a frame scored here is the frame
    served live)."""
    precision: PrecisionChoice = "auto"
    """auto (as n2n serve runs it): scores what n2n serve delivers on this machine, the precision recorded for it
    in the model folder (or timed and recorded now); fp32 scores the model itself."""
    retime: bool = False
    """precision 'auto': time the precisions that passed their check again instead of taking the choice recorded for
    this machine in the model folder (precision_choice.json), and record the new choice."""
    averaged: int = Field(1, ge=1)
    """Each frame is the mean of this many camera readouts (line or frame averaging): the model's noise model is
    divided accordingly, as n2n serve --averaged does (models with the camera's noise model only)."""
    device: Device = "auto"
    """Device for the engine."""
    trust_code: bool = False
    """Run a TorchScript file this install did not write (a downloaded package's or run folder's): a TorchScript file
    is a program that can read and write your files. Off: such a model runs from its ONNX weights (auto) or is
    refused (engine torch)."""
    output_dtype: Literal["same", "float32"] = "same"
    """same: score the frames in the camera's dtype, clipped and rounded, as n2n serve and n2n denoise deliver them
    (the same pixels); float32: the model's unrounded output."""
    motion_threshold: float | None = Field(MOTION_THRESHOLD, gt=0)
    """K-frame models: the motion check of n2n serve (streamer/core/history.py): a frame that moved against the oldest
    frame of its window is denoised alone; None: no check."""


class SimulateConfig(Versioned):
    """``n2n simulate``: record frames (and their truth) from the simulated camera."""

    camera: SimulatedCameraConfig = SimulatedCameraConfig()
    frames: int = Field(50, ge=1)
    """Number of frames to record."""
