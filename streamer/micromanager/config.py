"""``n2n grab``, ``n2n bridge`` and ``n2n acquire``'s configuration (``configs/micromanager.yaml``): where frames
come from, what the grab records, what the bridge serves and what an acquisition writes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..core.config import Strict, Versioned
from ..server.config import ServeConfig

__all__ = ["AcquireConfig", "BridgeConfig", "GrabConfig", "MicroManagerConfig", "MicroManagerSourceConfig"]


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
    """Consecutive frames to record (each pair t, t+1 is a training pair). With ``mda``, the frames of each burst,
    and then it must be given (flag or file): the default is not taken for every place."""
    out: str = "runs/grab/pairs.ome.tif"
    """OME-TIFF written (frames plus their Micro-Manager metadata); with ``mda``, the folder or prefix of the files
    (``runs/grab/pairs.ome.tif`` → ``runs/grab/pairs_p000_z001.ome.tif`` …)."""
    mda: str | None = None
    """A useq-schema MDASequence file (YAML or JSON): a burst of ``frames`` consecutive frames at each of its places
    (position, grid, channel, z; its time plan is ignored), one OME-TIFF (T, C, Y, X) per (position, grid, z); null:
    the current field only. A relative path is looked up beside the YAML file first, then in the working
    directory."""
    saturation_fraction: float = Field(0.001, ge=0, le=1)
    """Warn when more than this fraction of a frame's pixels sit at the camera's maximum."""
    max_shift_px: float = Field(0.5, ge=0)
    """Warn when consecutive frames are shifted by more than this (motion breaks Noise2Noise)."""


class BridgeConfig(Strict):
    """``n2n bridge``: Micro-Manager live frames → the denoising server → OME-TIFF and viewers."""

    model: str | list[str] | None = None
    """Model folder (or zoo package) to serve (a server is started in this process), or a model set: a list of
    CHANNEL=FOLDER (the core's channel group names each frame's channel) or a models.yaml; null with connect set."""
    connect: str | None = None
    """A running ``n2n serve``'s ready file (JSON with its endpoints) to use instead of starting one."""
    frames: int | None = Field(200, ge=1)
    """Frames to take from Micro-Manager; null runs until Ctrl-C."""
    out: str | None = "runs/bridge/bridge.ome.tif"
    """OME-TIFF of raw and denoised frames side by side (channels 'raw', 'denoised'); null: none."""


class AcquireConfig(Strict):
    """``n2n acquire``: a pymmcore-plus multi-dimensional acquisition (MDA), every frame denoised before it is
    written, raw and denoised both kept."""

    mda: str | None = None
    """The acquisition: a useq-schema MDASequence file (YAML or JSON: channels, stage positions, z plan, time
    plan). A relative path is looked up beside the YAML file first, then in the working directory."""
    models: list[str] | None = None
    """The model set to serve (a server is started in this process): a model folder or zoo package for every
    channel, CHANNEL=FOLDER per channel, or a models.yaml; null with connect set."""
    connect: str | None = None
    """A running ``n2n serve``'s ready file (JSON with its endpoints) to use instead of starting one."""
    out: str = "runs/acquire"
    """Folder written: raw.ome.zarr (every frame as acquired), denoised.ome.zarr, acquire.json (the counts)."""
    format: Literal["ome-zarr", "ome-tiff"] = "ome-zarr"
    """The files' format (pymmcore-plus's ome-writers): ome-zarr or ome-tiff."""
    overwrite: bool = False
    """Write over an existing acquisition in ``out`` (else refused: nothing acquired is ever overwritten)."""
    timeout_s: float = Field(10.0, gt=0)
    """Longest wait for one frame's denoised answer; then it is written raw (marked) and the run goes on."""


class MicroManagerConfig(Versioned):
    """``n2n grab``, ``n2n bridge`` and ``n2n acquire``."""

    source: MicroManagerSourceConfig = MicroManagerSourceConfig()
    grab: GrabConfig = GrabConfig()
    bridge: BridgeConfig = BridgeConfig()
    acquire: AcquireConfig = AcquireConfig()
    serve: ServeConfig = ServeConfig()
    """The server the bridge starts (mode, engine, precision, addresses)."""
