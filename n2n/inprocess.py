"""The in-process Micro-Manager core a command runs (``n2n acquire``, ``n2n grab --mda``): pymmcore-plus's UniMMCore
on the configured ``.cfg`` (the simulated microscope for 'sim'), never the GUI, always closed after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamer.micromanager.config import MicroManagerSourceConfig

__all__ = ["inprocess_core"]


@contextlib.contextmanager
def inprocess_core(source: MicroManagerSourceConfig, base_dir: Path | None, command: str,
                   for_the_gui: str) -> Iterator[Any]:
    """The core ``source`` names (its ``config_file``, relative to ``base_dir`` first), its exposure set where
    ``source`` gives one; stopped, unloaded and released after. ValueError where ``source`` names the GUI:
    ``command`` runs an in-process core, and ``for_the_gui`` says what to use with the GUI instead."""
    from streamer.micromanager import load_core, resolve_config_file
    from streamer.micromanager.core import close_core

    cfg_file = resolve_config_file(source.config_file, base_dir)
    if cfg_file is None:
        raise ValueError(f"{command} runs an in-process core (pymmcore-plus): expected --mm-config FILE.cfg or 'sim', "
                         f"got the Micro-Manager GUI ({for_the_gui})")
    core = load_core(cfg_file)
    try:
        if source.exposure_ms is not None:
            core.setExposure(source.exposure_ms)
        yield core
    finally:
        close_core(core)
