"""``n2n bench`` and ``n2n frontier``'s configurations (``configs/bench.yaml``, ``configs/frontier.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from streamer.core.config import Versioned

__all__ = ["BenchConfig", "FrontierConfig"]


class BenchConfig(Versioned):
    """``n2n bench``: transport floor, engines bare, end to end, live overload."""

    model: str | None = None
    """Model folder (``n2n train`` output, e.g. runs/demo/model)."""
    size: int = Field(512, ge=16)
    """Square frame side in pixels."""
    engines: str = "all"
    """'all' or a comma list of openvino, onnxruntime, torch."""
    precisions: str = "fp32,auto"
    """Comma list of fp32, auto, bf16, fp16."""
    frames: int = Field(100, ge=2)
    """Frames per measurement."""
    overload_s: float = Field(10.0, gt=0)
    """Seconds of live-mode overload at twice the engine's rate."""
    transport: Literal["tcp", "ipc"] = "tcp"
    threads: int | None = Field(None, ge=1)
    """CPU threads per engine (None: the engine's default)."""
    repeats: int = Field(3, ge=1)
    """Bare-engine repeats (medians reported; more than 10% apart: 'noisy')."""
    warmup: int = Field(10, ge=0)
    """Frames run before each timing."""
    json_path: str | None = None
    """Write the report here."""
    report: str | None = None
    """Folder for report.json, report.md and the plots."""


class FrontierConfig(Versioned):
    """``n2n frontier``: quality against speed for several models, each at every precision it runs at."""

    models: list[str] = Field(default_factory=list)
    """Model folders (``n2n train`` outputs)."""
    data: str | None = None
    """Noisy stack to score (TIFF / OME-TIFF)."""
    reference: str | None = None
    """Its clean reference, (H, W) or (T, H, W)."""
    sizes: list[int] = Field(default_factory=lambda: [512, 2048])
    """Square frame sides for the speed measurements; the plot uses the first."""
    precisions: str = "fp32,bf16,int8"
    """Comma list of fp32, bf16, fp16, int8 (a model measured at those it can run at)."""
    frames: int = Field(100, ge=2)
    """Frames per speed measurement below 1024 px."""
    frames_large: int = Field(8, ge=2)
    """Frames per speed measurement at 1024 px and above."""
    threads: int | None = Field(None, ge=1)
    max_frames: int | None = Field(None, ge=1)
    """Score only the first N frames of data (None: all)."""
    json_path: str | None = None
    report: str | None = "runs/frontier"
    """Folder for frontier.json, frontier.md and frontier.png."""

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 16:
            raise ValueError(f"expected one or more sizes >= 16, got {v}")
        return v
