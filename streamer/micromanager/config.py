"""``n2n grab`` and ``n2n bridge``'s configuration (``configs/micromanager.yaml``): where frames come from, what the
grab records and what the bridge serves."""

from __future__ import annotations

from pydantic import Field

from ..core.config import Strict, Versioned
from ..server.config import ServeConfig

__all__ = ["BridgeConfig", "GrabConfig", "MicroManagerConfig", "MicroManagerSourceConfig"]


class MicroManagerSourceConfig(Strict):
    """Where frames come from: an in-process core or a running Micro-Manager GUI."""

    config_file: str | None = "sim"
    """Micro-Manager configuration (.cfg) for an in-process core (pymmcore-plus; '#py' lines load
    Python devices); 'sim' is the built-in simulated session (configs/micromanager/sim.cfg);
    null attaches to a running Micro-Manager GUI over pycromanager's Java bridge. A relative path
    is looked up beside the YAML file first, then in the working directory."""
    port: int = Field(4827, ge=1, le=65535)
    """pycromanager bridge port of the Micro-Manager GUI (config_file: null)."""
    exposure_ms: float | None = Field(None, gt=0)
    """Set the camera's exposure first; null keeps Micro-Manager's (a running live view keeps its own)."""
    timeout_s: float = Field(10.0, gt=0)
    """Longest wait for one frame before giving up with an error."""


class GrabConfig(Strict):
    """``n2n grab``: consecutive frames for Noise2Noise training."""

    frames: int = Field(200, ge=2)
    """Consecutive frames to record (each pair t, t+1 is a training pair)."""
    out: str = "runs/grab/pairs.ome.tif"
    """OME-TIFF written (frames plus their Micro-Manager metadata)."""
    saturation_fraction: float = Field(0.001, ge=0, le=1)
    """Warn when more than this fraction of a frame's pixels sit at the camera's maximum."""
    max_shift_px: float = Field(0.5, ge=0)
    """Warn when consecutive frames are shifted by more than this (motion breaks Noise2Noise)."""


class BridgeConfig(Strict):
    """``n2n bridge``: Micro-Manager live frames → the denoising server → OME-TIFF and viewers."""

    model: str | None = None
    """Model folder to serve (a server is started in this process); null with connect set."""
    connect: str | None = None
    """A running ``n2n serve``'s ready file (JSON with its endpoints) to use instead of starting one."""
    frames: int | None = Field(200, ge=1)
    """Frames to take from Micro-Manager; null runs until Ctrl-C."""
    out: str | None = "runs/bridge/bridge.ome.tif"
    """OME-TIFF of raw and denoised frames side by side (channels 'raw', 'denoised'); null: none."""


class MicroManagerConfig(Versioned):
    """``n2n grab`` and ``n2n bridge``."""

    source: MicroManagerSourceConfig = MicroManagerSourceConfig()
    grab: GrabConfig = GrabConfig()
    bridge: BridgeConfig = BridgeConfig()
    serve: ServeConfig = ServeConfig()
    """The server the bridge starts (mode, engine, precision, addresses)."""
