"""Micro-Manager: the simulated camera as a device, cores (in-process and GUI), grabbing
training frames, the live bridge to the server, and the pycromanager denoising hook."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..sources.micromanager import MicroManagerSource
from .config import MicroManagerSourceConfig
from .core import (
    JAVA_BRIDGE_HINT,
    SIM_CFG,
    MicroManagerUnavailable,
    SnakeCaseCore,
    close_core,
    connect_gui,
    load_core,
    open_core,
    release_pycromanager_core,
    use_as_pycromanager_core,
)
from .hook import DenoiseHook, denoise_hook

__all__ = ["JAVA_BRIDGE_HINT", "SIM_CFG", "DenoiseHook", "MicroManagerUnavailable", "SnakeCaseCore", "close_core",
           "connect_gui", "denoise_hook", "load_core", "open_core", "open_source", "release_pycromanager_core",
           "resolve_config_file", "use_as_pycromanager_core"]


def resolve_config_file(config_file: str | None, base_dir: Path | None) -> str | None:
    """``sim`` and None as they are; a relative path beside the YAML file if it is there, else as given."""
    if config_file in (None, "sim"):
        return config_file
    path = Path(config_file)
    if not path.is_absolute() and base_dir is not None and (base_dir / path).is_file():
        return str(base_dir / path)
    return str(path)


@contextmanager
def open_source(config: MicroManagerSourceConfig, base_dir: Path | None = None) -> Iterator[MicroManagerSource]:
    """A frame source on the configured core; an in-process core is shut down cleanly after."""
    cfg_file = resolve_config_file(config.config_file, base_dir)
    core: Any = (connect_gui(config.port, timeout_ms=int(max(2.0, config.timeout_s) * 1000)) if cfg_file is None
                 else load_core(cfg_file))
    try:
        source = MicroManagerSource(core, exposure_ms=config.exposure_ms, timeout_s=config.timeout_s)
        try:
            yield source
        finally:
            source.close()
    finally:
        if cfg_file is not None:
            close_core(core)
        del core
