"""Shared fixtures: tiny simulated stacks on disk, the FMD data folder, one tiny trained run."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch

from streamer.sources import SimulatedCameraConfig, simulate_stack
from trainer.config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
FMD_DIR = (REPO_ROOT / ".." / "shared" / "data" / "fmd-confocal-bpae-b").resolve()


def pytest_configure(config: pytest.Config) -> None:
    """The user's configuration folder (the list of TorchScript files this install wrote, streamer/core/trust.py)
    is a temporary one for the session, so tests never write to the real home; subprocesses inherit it."""
    folder = tempfile.mkdtemp(prefix="n2n-config-")
    config._n2n_config_dir = folder  # type: ignore[attr-defined]
    os.environ["N2N_CONFIG_DIR"] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, "_n2n_config_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU"))


def write_tiff(path: Path, array: np.ndarray) -> Path:
    """Write a (T, H, W) stack as OME-TIFF (axes TYX) and return the path."""
    tifffile.imwrite(path, array, ome=True, metadata={"axes": "TYX"})
    return path


TINY_CAMERA: dict[str, Any] = {"height": 64, "width": 64, "exposure_ms": 10.0, "seed": 3}


def tiny_train_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """A tiny, fast, deterministic TrainConfig as a dict; ``sections`` update its sub-dicts."""
    cfg: dict[str, Any] = {
        "version": 1,
        "mode": "n2n",
        "model": {"depth": 1, "base_filters": 8, "residual": True},
        "data": {"patch_size": 32, "val_pairs": 2, "frames": 6, "camera": dict(TINY_CAMERA)},
        "optim": {"batch_size": 4, "epochs": 2, "steps_per_epoch": 5, "warmup_steps": 2,
                  "precision": "fp32", "device": "cpu", "num_threads": 1, "seed": 0},
        "quantize": {"int8": False},  # the INT8 tests make their own (tests/test_quantize.py)
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


def train_tiny(base: Path, raw: np.ndarray, truth: np.ndarray | None = None,
               **sections: dict[str, Any]) -> tuple[Path, Any]:
    """Train the tiny config (``sections`` update it) on ``raw`` (and ``truth`` as the reference) written into
    ``base``; returns the run folder and its model card."""
    from trainer.run import run_training

    refs = [write_tiff(base / "gt.ome.tif", truth)] if truth is not None else []
    card = run_training(TrainConfig.model_validate(tiny_train_dict(**sections)), base / "run",
                        [write_tiff(base / "raw.ome.tif", raw)], refs)
    return base / "run", card


@pytest.fixture
def tiny_config() -> Callable[..., TrainConfig]:
    """Factory: a validated tiny TrainConfig, e.g. ``tiny_config(optim={"epochs": 3})``."""

    def make(**sections: dict[str, Any]) -> TrainConfig:
        return TrainConfig.model_validate(tiny_train_dict(**sections))

    return make


@pytest.fixture
def tiny_config_dict() -> Callable[..., dict[str, Any]]:
    """Factory: the tiny TrainConfig as a plain dict (for YAML files and CLI tests)."""
    return tiny_train_dict


@pytest.fixture
def write_stack() -> Callable[[Path, np.ndarray], Path]:
    """Function that writes an array as an OME-TIFF (axes TYX) and returns its path."""
    return write_tiff


@pytest.fixture
def sim_stack() -> tuple[np.ndarray, np.ndarray]:
    """Six 64×64 frames (uint16) from the simulated camera and their truth (float32)."""
    return simulate_stack(SimulatedCameraConfig(**TINY_CAMERA), 6)


@pytest.fixture
def sim_tiff(tmp_path: Path, sim_stack: tuple[np.ndarray, np.ndarray]) -> tuple[Path, Path]:
    """The tiny simulated stack and its truth written as OME-TIFF files in tmp_path."""
    raw, truth = sim_stack
    return write_tiff(tmp_path / "raw.ome.tif", raw), write_tiff(tmp_path / "truth.ome.tif", truth)


@pytest.fixture
def fmd_dir() -> Path:
    """The FMD confocal data folder beside the checkout; skips the test when it is absent."""
    if not FMD_DIR.is_dir():
        pytest.skip(f"FMD data not found at {FMD_DIR}; it lives in ../shared/data beside the checkout")
    return FMD_DIR


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny run trained once per session on simulated frames (do not modify: use run_copy)."""
    from trainer.run import run_training

    base = tmp_path_factory.mktemp("trained")
    raw, truth = simulate_stack(SimulatedCameraConfig(**TINY_CAMERA), 6)
    raw_path = write_tiff(base / "raw.ome.tif", raw)
    truth_path = write_tiff(base / "truth.ome.tif", truth)
    config = TrainConfig.model_validate(tiny_train_dict())
    run_dir = base / "run"
    run_training(config, run_dir, [raw_path], [truth_path])
    return {"run": run_dir, "raw": raw_path, "truth": truth_path}


@pytest.fixture
def run_copy(tmp_path: Path, trained_run: dict[str, Path]) -> Path:
    """A private copy of the session's trained run folder that a test may change."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run["run"], dst)
    return dst


@pytest.fixture(scope="module")
def display() -> Iterator[dict[str, str]]:
    """An Xvfb display for a module's napari processes (tests/test_viewer.py, tests/test_open_in_napari.py):
    the environment to run them in."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed (Debian/Ubuntu: apt install xvfb)")
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    try:
        assert number, "Xvfb did not report its display"
        env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
        yield {**env, "DISPLAY": f":{number}", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
