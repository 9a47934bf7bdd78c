"""``n2n serve``'s configuration (``configs/serve.yaml``): the server, its sockets, its fine-tuning worker."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..core.choices import Device, EngineChoice, OutputDtype, PrecisionChoice
from ..core.config import Strict, Versioned
from ..core.history import MOTION_THRESHOLD
from ..endpoints import Endpoints

__all__ = ["CONTROL_COMMANDS", "ControlCommand", "FinetuneConfig", "ServeConfig"]

ControlCommand = Literal["status", "swap", "shutdown"]
CONTROL_COMMANDS: tuple[ControlCommand, ...] = ("status", "swap", "shutdown")


class FinetuneConfig(Strict):
    """``n2n serve --finetune``: keep training the served model on the live stream (a worker process)."""

    enabled: bool = False
    """Start the fine-tuning worker with the server."""
    every: int = Field(10, ge=1)
    """One pair of consecutive frames in this many frames goes to the worker (sampled across the session)."""
    ring_pairs: int = Field(64, ge=4)
    """Pairs the worker keeps at most (the oldest go first): its memory bound."""
    val_every: int = Field(5, ge=2)
    """One pair in this many is held out to validate on."""
    min_pairs: int = Field(12, ge=2)
    """Training pairs before the first round."""
    steps: int = Field(50, ge=1)
    """Optimiser steps per round."""
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(64, ge=16)
    learning_rate: float = Field(1e-3, gt=0)
    """Adam's learning rate, constant (the training run's peak): on the fine-tuning benchmark 1e-3 ends 0.9 dB
    above a model trained from scratch on as many patches, 5e-4 0.16 dB above, 2e-4 0.5 dB below."""
    val_crop: int = Field(256, ge=32)
    """Validation on the centre of each held-out pair, at most this many pixels square."""
    margin: float = Field(0.001, lt=1)
    """A candidate is swapped in when its validation loss is below the serving model's by this fraction. The
    Noise2Noise loss is mostly the noise itself, which no model removes: a model 0.5 dB closer to the clean image
    lowers it by well under 1% on low-light frames, so a larger margin keeps a better model waiting."""
    threads: int = Field(1, ge=1)
    """The worker's PyTorch threads (its CPU share, with nice)."""
    nice: int = Field(10, ge=0, le=19)
    """The worker's niceness: below the server's priority."""
    out: str | None = None
    """Where swapped-in models are saved as run folders; None: the served model's folder's parent."""


class ServeConfig(Versioned):
    """``n2n serve``: the ZeroMQ denoising service."""

    engine: EngineChoice = "auto"
    """Inference engine. 'auto': PyTorch on a CUDA GPU, else OpenVINO, else ONNX Runtime (the TorchScript engine runs
    on the CPU only when asked for: 'torch')."""
    precision: PrecisionChoice = "auto"
    """'auto': the fastest precision here among those that passed their check (bf16/fp16 against float32,
    see min_precision_psnr_db; int8: the model's INT8 export, checked on held-out frames when written). Its choice
    is recorded per machine in the model folder and taken again on the next start (see retime)."""
    retime: bool = False
    """precision 'auto': time the precisions that passed their check again instead of taking the choice recorded for
    this machine in the model folder (precision_choice.json), and record the new choice."""
    averaged: int = Field(1, ge=1)
    """Each frame is the mean of this many camera readouts (a confocal's line or frame averaging, a camera's
    on-board averaging): the model's noise model is divided accordingly, so an average of 4 is denoised as the 4×
    exposure it is. Needs models with the camera's noise model (data.normalization: anscombe); applies to every
    model of a set."""
    min_precision_psnr_db: float = Field(50.0, gt=0)
    """Reduced precision is used only if its output on a calibration frame is this close to float32."""
    device: Device = "auto"
    """Where the engine runs ('auto': CUDA when the engine and a GPU allow it)."""
    num_threads: int | None = Field(None, ge=1)
    """CPU threads for the engine; None: the engine's default (all cores)."""
    mode: Literal["live", "lossless"] = "live"
    """'live': latest frame wins, drops counted; 'lossless': every frame in order, backpressure to the producer."""
    output_dtype: OutputDtype = "same"
    """'same': the input's dtype, clipped and rounded; 'float32': unrounded intensities."""
    tile_size: int | None = Field(None, ge=16)
    """Frames larger than this (either side) are tiled; None: the model card's tile size."""
    tile_overlap: int | None = Field(None, ge=0)
    """Margin each tile shares with its neighbours; None: the model card's (>= the U-Net's reach)."""
    queue_size: int = Field(4, ge=1)
    """Lossless mode: frames held in the server before the producer is made to wait."""
    max_batch: int = Field(4, ge=1, le=64)
    """The most images one engine call takes: frames (lossless mode: this many frames already waiting, at most
    queue_size, of one shape and dtype and at most batch_max_pixels each; 1: never; measured +13-19% frames/s
    at 128², +1% at 256², 0 to -15% at 512²) or the tiles of one large frame (so that the engine's memory is
    bounded by this many tiles, not by the frame's area)."""
    curve_keys: str | None = None
    """A folder made by ``n2n keys``: every socket encrypted and authenticated with CURVE, only the clients whose
    public keys are in its ``allowed/`` let in (refusals counted as ``auth_refused``)."""
    insecure: bool = False
    """Allow an address other machines can reach without CURVE keys: anyone who reaches it can send frames, read
    every frame, swap the model (inside models_root) and shut the server down."""
    control_commands: list[ControlCommand] = Field(default_factory=lambda: list(CONTROL_COMMANDS))
    """Commands the control socket accepts (``[status]``: nobody can swap the model or stop the server)."""
    models_root: str | None = None
    """``swap`` takes only model folders (or zoo packages) inside this folder (relative names are taken inside it);
    None: the folder holding the served model's folder or package, as given at start (its siblings, e.g. runs/)."""
    trust_code: bool = False
    """Run a TorchScript file this install did not write (a downloaded package's or run folder's), here and on swap:
    a TorchScript file is a program that can read and write your files. Off: such a model is served from its ONNX
    weights (auto) or refused (engine torch)."""
    slow_subscriber_timeout_s: float | None = Field(None, gt=0)
    """Lossless mode: a denoised frame waits for a subscriber with no room (requests, stats and control are
    served meanwhile, so a stalled viewer never stops the server; the producers wait: that is lossless). A
    number of seconds: past it the frame is dropped and counted (``slow_subscriber``), and so is every frame
    after it until the subscriber has room again (for every subscriber: ZeroMQ refuses the frame to all)."""
    finetune: FinetuneConfig = FinetuneConfig()
    """Online fine-tuning on the live stream (off unless enabled)."""
    max_shapes: int = Field(8, ge=1)
    """Frame shapes kept compiled at most; a new one beyond releases the least recently used (memory stays
    bounded however many shapes arrive, and a swap compiles at most this many)."""
    batch_max_pixels: int = Field(128 * 128, ge=1)
    """Only frames this small are batched: larger ones keep the cores busy on their own."""
    input_buffer_bytes: int = Field(1 * 2**30, ge=1024)
    """Live mode: bytes of frames the input holds at most, whatever their size (a thread reads them as they arrive
    while the engine runs; past it the oldest are dropped and counted as ``input`` drops: newer frames came)."""
    max_message_bytes: int = Field(256 * 2**20, ge=1024)
    """Largest frame message accepted (its parts in all, 64 KiB for the header aside); larger ones get an error
    (oversized; a part larger than this plus 64 KiB disconnects its sender: ZeroMQ's limit per part)."""
    tile_batch_pixels: int = Field(2048 * 2048, ge=1)
    """A large frame's tiles run at most this many pixels per engine call (and at most max_batch tiles): the
    engine's working memory grows with the pixels of one call (about 0.8 KiB per pixel measured for the default
    network with OpenVINO: a 2048² tile about 3 GB at its peak), so it is bounded by this, not by the frame's area;
    after a large frame the engine gives that memory back."""
    stats_interval_s: float = Field(0.5, gt=0)
    """Seconds between statistics messages."""
    latency_window: int = Field(1000, ge=10)
    """Frames in the rolling window for latency percentiles."""
    motion_threshold: float | None = Field(MOTION_THRESHOLD, gt=0)
    """K-frame models: a frame whose motion score against the oldest frame of its history exceeds this is
    denoised from itself alone (streamer/core/history.py; counted as motion_fallbacks); None: no motion check."""
    max_streams: int = Field(64, ge=1)
    """K-frame models: streams (``meta.stream`` of the frames) whose history is kept; beyond, the least recently
    seen one is forgotten."""
    endpoints: Endpoints = Endpoints()
