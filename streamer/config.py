"""Configuration: pydantic v2 models read from YAML files in ``configs/``.

The loader and base classes live here (the streamer never imports the trainer, while the
trainer's own configs build on these), with the streamer's :class:`ServeConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .history import MOTION_THRESHOLD

__all__ = [
    "CONFIG_VERSION",
    "ENDPOINT_NAMES",
    "ConfigError",
    "DenoiseConfig",
    "Endpoints",
    "FrontierConfig",
    "ServeConfig",
    "load_config",
    "save_config",
]

CONFIG_VERSION = 1


class _Null:
    """An override that sets a key to null (``--set key=null``); a plain None override means "not given"."""

    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()


class ConfigError(ValueError):
    """A configuration is missing, malformed or invalid. The message is one line naming where the bad value
    came from (the flag that set it, else the file and key), what was expected and what came."""

    @classmethod
    def from_validation(cls, exc: ValidationError, model: type[BaseModel], path: Path | None,
                        origins: dict[str, str]) -> ConfigError:
        """The first of pydantic's errors in our words (``and N more`` when there are others)."""
        messages = list(dict.fromkeys(
            cls._describe(tuple(str(p) for p in e["loc"]), e["type"], e["msg"], dict(e.get("ctx") or {}),
                          e.get("input"), model, path, origins)
            for e in exc.errors(include_url=False)))
        more = len(messages) - 1
        return cls(messages[0] + (f" (and {more} more error{'s' if more > 1 else ''})" if more else ""))

    @classmethod
    def _describe(cls, loc: tuple[str, ...], kind: str, msg: str, ctx: dict, value: object,
                  model: type[BaseModel], path: Path | None, origins: dict[str, str]) -> str:
        got = f", got {cls._show(value)}"
        if kind == "extra_forbidden":  # an unknown key: name the keys its section takes
            import difflib

            section = cls._model_at(model, loc[:-1])
            keys = list(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(loc[-1], keys, n=1)
            what = (f"expected one of the keys {', '.join(keys)}, got {loc[-1]!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else ""))
            key = ".".join(loc)  # the flag that set this key, or one below it (--set nope.x=1 makes 'nope')
            flag = origins.get(key) or next((f for k, f in origins.items() if k.startswith(key + ".")), None)
            return f"{flag}: {what}" if flag else cls._where(path, loc[:-1], what)
        bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
        if kind in bounds:
            what = f"expected a number {bounds[kind]} {next(iter(ctx.values()), '?')}{got}"
        elif kind == "missing":
            what = "expected a value for this required key, got none"
        elif kind in ("value_error", "assertion_error"):  # our validators say what they expected and got
            what = msg.split(", ", 1)[-1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
        elif "should be " in msg or "should have " in msg:
            rest = msg.split("should be ", 1)[-1] if "should be " in msg else msg.split("should have ", 1)[-1]
            if kind.endswith(("_parsing", "_type")):
                rest = rest.split(", ", 1)[0]  # "a valid integer, unable to parse string as an integer"
            what = f"expected {rest}{got}"
        else:
            what = f"{msg}{got}"
        for depth in range(len(loc), 0, -1):  # a value set by a flag (or a section set whole by one)
            flag = origins.get(".".join(loc[:depth]))
            if flag:
                deeper = cls._key(loc[depth:])
                return f"{flag}: {deeper + ': ' if deeper else ''}{what}"
        # a check across keys (a validator of the section at loc): name the flags that set keys inside it too
        inside = sorted({f for k, f in origins.items() if not loc or k.startswith(".".join(loc) + ".")})
        return cls._where(path, loc, what, inside)

    @staticmethod
    def _key(loc: tuple[str, ...]) -> str:
        """``('model', 'filters', '1')`` → ``model.filters[1]``."""
        return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")

    @classmethod
    def _where(cls, path: Path | None, loc: tuple[str, ...], what: str, flags: list[str] | None = None) -> str:
        sources = ([str(path)] if path is not None else []) + ([", ".join(flags)] if flags else [])
        return ": ".join([p for p in (" with ".join(sources), cls._key(loc)) if p] + [what])

    @staticmethod
    def _show(value: object) -> str:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    @staticmethod
    def _model_at(model: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
        """The pydantic model of the section at ``loc`` (None where it is not a model)."""
        from typing import get_args

        current: type[BaseModel] | None = model
        for part in loc:
            field = current.model_fields.get(part) if current is not None else None
            if field is None:
                return None
            options = (field.annotation, *get_args(field.annotation))
            current = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
        return current


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class _Versioned(_Strict):
    version: Literal[1] = 1
    """Configuration schema version."""


_SCHEMES = ("tcp://", "ipc://", "inproc://")
ENDPOINT_NAMES = ("input", "output", "request", "stats", "control", "view")
"""The server's five sockets, in the order of :class:`Endpoints`."""


class Endpoints(_Strict):
    """ZeroMQ addresses the server binds (clients connect to the same strings).

    ``tcp://127.0.0.1:*`` binds a free port (the server reports the one it got);
    ``ipc:///tmp/n2n-input`` is fastest for large frames on one host.
    """

    input: str = "tcp://127.0.0.1:5555"
    """PULL: producers push frames here."""
    output: str = "tcp://127.0.0.1:5556"
    """XPUB: denoised frames (topic ``frame``), copies of request results (``reply``) and errors (``error``)
    for any number of subscribers (the server counts them)."""
    request: str = "tcp://127.0.0.1:5557"
    """ROUTER: a synchronous caller (REQ) sends a frame and gets its denoised frame back."""
    stats: str = "tcp://127.0.0.1:5558"
    """PUB: statistics as JSON (topic ``stats``), twice a second."""
    control: str = "tcp://127.0.0.1:5559"
    """REP: status, model swap, shutdown (JSON commands)."""
    view: str = "tcp://127.0.0.1:5560"
    """XPUB: for viewers (``n2n view``, the napari widget), each frame's raw and denoised pixels in one message
    (topic ``view``), sent only while a viewer is subscribed; lossy: a viewer that falls behind misses frames,
    never slows the server (at most 2 messages queue for it)."""

    @classmethod
    def local(cls, transport: str = "tcp", folder: str | Path | None = None) -> Endpoints:
        """Every socket on this machine only, on ports the system picks (``tcp://127.0.0.1:*``), or as
        ``ipc://FOLDER/NAME`` files (``transport='ipc'``: the fastest path between processes of one host)."""
        if transport == "ipc":
            if folder is None:
                raise ValueError("ipc endpoints need a folder for their socket files")
            return cls(**{name: f"ipc://{folder}/{name}" for name in ENDPOINT_NAMES})
        if transport != "tcp":
            raise ValueError(f"expected transport tcp or ipc, got {transport!r}")
        return cls(**{name: "tcp://127.0.0.1:*" for name in ENDPOINT_NAMES})

    @field_validator(*ENDPOINT_NAMES)
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(_SCHEMES):
            raise ValueError(f"expected an address starting with one of {', '.join(_SCHEMES)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> Endpoints:
        addrs = [a for a in self.model_dump().values() if not a.endswith(":*")]
        dup = {a for a in addrs if addrs.count(a) > 1}
        if dup:
            raise ValueError(f"each socket needs its own address; used twice: {', '.join(sorted(dup))}")
        return self


ControlCommand = Literal["status", "swap", "shutdown"]
CONTROL_COMMANDS: tuple[ControlCommand, ...] = ("status", "swap", "shutdown")


class FinetuneConfig(_Strict):
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
    learning_rate: float = Field(2e-4, gt=0)
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


class ServeConfig(_Versioned):
    """``n2n serve``: the ZeroMQ denoising service."""

    engine: Literal["auto", "openvino", "onnxruntime", "torch"] = "auto"
    """Inference engine. 'auto': PyTorch on CUDA with a GPU, else OpenVINO, else ONNX Runtime, else PyTorch."""
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    """'auto': the fastest precision here among those that passed their check (bf16/fp16 against float32,
    see min_precision_psnr_db; int8: the model's INT8 export, checked on held-out frames when written)."""
    min_precision_psnr_db: float = Field(50.0, gt=0)
    """Reduced precision is used only if its output on a calibration frame is this close to float32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the engine runs ('auto': CUDA when the engine and a GPU allow it)."""
    num_threads: int | None = Field(None, ge=1)
    """CPU threads for the engine; None: the engine's default (all cores)."""
    mode: Literal["live", "lossless"] = "live"
    """'live': latest frame wins, drops counted; 'lossless': every frame in order, backpressure to the producer."""
    output_dtype: Literal["same", "float32"] = "same"
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
    """``swap`` takes only model folders inside this folder (relative names are taken inside it); None: the
    folder holding the served model's folder (its siblings, e.g. runs/)."""
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
    """Live mode: the input ZeroMQ may queue, in bytes at the expected frame size (the model's shape hint,
    16-bit), between 16 and 1000 frames: room for the newest frame of a fast camera."""
    max_message_bytes: int = Field(256 * 2**20, ge=1024)
    """Largest frame message accepted; larger ones get an error (oversized beyond twice this: disconnected)."""
    stats_interval_s: float = Field(0.5, gt=0)
    """Seconds between statistics messages."""
    latency_window: int = Field(1000, ge=10)
    """Frames in the rolling window for latency percentiles."""
    motion_threshold: float | None = Field(MOTION_THRESHOLD, gt=0)
    """K-frame models: a frame whose motion score against the oldest frame of its history exceeds this is
    denoised from itself alone (streamer/history.py; counted as motion_fallbacks); None: no motion check."""
    max_streams: int = Field(64, ge=1)
    """K-frame models: streams (``meta.stream`` of the frames) whose history is kept; beyond, the least recently
    seen one is forgotten."""
    endpoints: Endpoints = Endpoints()


C = TypeVar("C", bound=BaseModel)


def load_config(cls: type[C], path: str | Path | None, *, origins: dict[str, str] | None = None,
                **overrides: object) -> C:
    """Load ``cls`` from a YAML file (or defaults), apply dotted-key overrides, validate.

    ``origins`` names where an override came from (``{"format": "--format"}``): an error in a value set
    there names the flag instead of the file. Every error is a :class:`ConfigError` of one line.
    """
    origins = origins or {}
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "\0"
        if "\0" in text:
            raise ConfigError(f"{path}: expected a YAML config (text), got a binary file") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
        if not isinstance(loaded, dict):
            if loaded is None:
                content = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
                came = "null" if content else "an empty file"
            else:
                kind = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
                came = f"{kind.get(type(loaded), type(loaded).__name__)} ({ConfigError._show(loaded)})"
            raise ConfigError(f"{path}: expected a mapping of settings (key: value lines), got {came}")
        data = loaded
    for key, value in overrides.items():
        if value is None:
            continue
        if value is NULL:
            value = None
        node = data
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            if p not in node:
                node[p] = {}
            child = node[p]
            if not isinstance(child, dict):
                where = ".".join(parents[: i + 1])
                label = f" ({origins[key]})" if key in origins else ""
                raise ConfigError(f"{path or 'settings'}: {where}: expected a mapping of settings to set "
                                  f"{key}{label}, got {child!r}")
            node = child
        node[leaf] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, cls, Path(path) if path is not None else None, origins) from None


def save_config(config: BaseModel, path: str | Path) -> None:
    """Write a config as YAML that :func:`load_config` reads back unchanged."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


# --- Micro-Manager (n2n grab, n2n bridge) ------------------------------------------------------------
class MicroManagerSourceConfig(_Strict):
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


class GrabConfig(_Strict):
    """``n2n grab``: consecutive frames for Noise2Noise training."""

    frames: int = Field(200, ge=2)
    """Consecutive frames to record (each pair t, t+1 is a training pair)."""
    out: str = "runs/grab/pairs.ome.tif"
    """OME-TIFF written (frames plus their Micro-Manager metadata)."""
    saturation_fraction: float = Field(0.001, ge=0, le=1)
    """Warn when more than this fraction of a frame's pixels sit at the camera's maximum."""
    max_shift_px: float = Field(0.5, ge=0)
    """Warn when consecutive frames are shifted by more than this (motion breaks Noise2Noise)."""


class BridgeConfig(_Strict):
    """``n2n bridge``: Micro-Manager live frames → the denoising server → OME-TIFF and viewers."""

    model: str | None = None
    """Model folder to serve (a server is started in this process); null with connect set."""
    connect: str | None = None
    """A running ``n2n serve``'s ready file (JSON with its endpoints) to use instead of starting one."""
    frames: int | None = Field(200, ge=1)
    """Frames to take from Micro-Manager; null runs until Ctrl-C."""
    out: str | None = "runs/bridge/bridge.ome.tif"
    """OME-TIFF of raw and denoised frames side by side (channels 'raw', 'denoised'); null: none."""


class MicroManagerConfig(_Versioned):
    """``n2n grab`` and ``n2n bridge``."""

    source: MicroManagerSourceConfig = MicroManagerSourceConfig()
    grab: GrabConfig = GrabConfig()
    bridge: BridgeConfig = BridgeConfig()
    serve: ServeConfig = ServeConfig()
    """The server the bridge starts (mode, engine, precision, addresses)."""


# --- the tools around the server (n2n dash, n2n bench, n2n demo) -------------------------------------------
class DashConfig(_Versioned):
    """``n2n dash``: the live terminal dashboard."""

    stats: str = "tcp://127.0.0.1:5558"
    """The server's stats address (its ``endpoints.stats``)."""


class BenchConfig(_Versioned):
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


class FrontierConfig(_Versioned):
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


class DemoConfig(_Versioned):
    """``n2n demo``: the whole product on the simulated Micro-Manager session."""

    quick: bool = False
    """Under a minute: 128² frames and a small model trained for seconds."""
    out: str = "runs/demo"
    """Report folder."""
    dash: bool = True
    """Show the live dashboard while bridging."""
    view: bool = False
    """Open napari (n2n view) on the live stage: raw | denoised (needs the viewer extra and a display)."""


class DenoiseConfig(_Versioned):
    """``n2n denoise``: a recorded dataset through the serving Denoiser, resumable, on one machine or Dask."""

    engine: Literal["auto", "openvino", "onnxruntime", "torch"] = "auto"
    """Inference engine (the same Denoiser as n2n serve: a plane denoised here is the frame served live)."""
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    """auto: the fastest precision that passes its check here, decided once and recorded, so a resumed
    run and every worker use the same one."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device for the engine."""
    threads: int | None = Field(None, ge=1)
    """Engine threads per worker; None: the machine's cores shared among the workers."""
    dtype: Literal["same", "float32"] = "same"
    """Output pixels: same (the input's dtype, clipped and rounded, as the server converts) or float32."""
    channel: int | str | None = None
    """Denoise only this channel (an index or a name) and copy the others; None: every plane."""
    workers: int = Field(1, ge=1)
    """Processes: 1 runs here; N > 1 starts a Dask LocalCluster of N workers."""
    scheduler: str | None = None
    """An existing Dask scheduler (tcp://HOST:PORT) instead of a local cluster; every worker must see the
    input, the model and the output's folder under the same paths."""
    chunk_mib: float = Field(16.0, gt=0)
    """Planes per task: as many as fit this many MiB of input (at most 16), so memory per worker is bounded
    by a chunk, never the dataset."""
    overwrite: bool = False
    """Replace an existing output (never the input)."""
