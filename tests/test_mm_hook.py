"""The pycromanager image-processor hook: denoised images in the camera's dtype, raw ones kept when the
server is away, and a whole pycromanager Acquisition on an in-process MMCore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT

from streamer.endpoints import Endpoints
from streamer.micromanager import denoise_hook
from streamer.server import ServeConfig, running_server
from streamer.sources import SimulatedCamera, SimulatedCameraConfig, read_stack

SIZE = 64


def serve_config(**overrides: Any) -> ServeConfig:
    return ServeConfig.model_validate({"num_threads": 1, "precision": "fp32", "endpoints": Endpoints.local(),
                                       **overrides})


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    return trained_run["run"]


def test_hook_returns_the_denoised_image_in_the_input_dtype(run: Path) -> None:
    """One (image, metadata) tuple, same dtype and shape, equal to the server's denoiser, metadata marked."""
    frame = SimulatedCamera(SimulatedCameraConfig(height=SIZE, width=SIZE, seed=5)).read().pixels
    with running_server(run, serve_config(output_dtype="float32")) as server, \
            denoise_hook(server.endpoints) as hook:
        image, meta = hook(frame, {"ImageNumber": "3", "Axes": {"time": 0}})
        reference = server.denoiser(frame)
    assert image.dtype == np.uint16 and image.shape == frame.shape
    assert np.array_equal(image, np.clip(np.rint(reference), 0, 65535).astype(np.uint16))
    assert meta["n2n-denoised"] is True and meta["ImageNumber"] == "3" and meta["n2n-latency-ms"] > 0
    assert hook.frames == hook.denoised == 1 and hook.errors == 0


def test_hook_keeps_the_raw_image_when_the_server_is_away(tmp_path: Path) -> None:
    """No server: the raw image comes back (the acquisition goes on), flagged, counted, and saved when asked."""
    frame = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    with denoise_hook("tcp://127.0.0.1:47993", timeout_s=0.2, keep_raw=tmp_path / "raw.ome.tif") as hook:
        image, meta = hook(frame, {"ImageNumber": "0"})
        image2, _ = hook(frame + 1, {"ImageNumber": "1"})
    assert np.array_equal(image, frame) and np.array_equal(image2, frame + 1)
    assert meta["n2n-denoised"] is False and "no reply" in meta["n2n-error"]
    assert hook.errors == 2 and hook.denoised == 0
    assert np.array_equal(read_stack(tmp_path / "raw.ome.tif"), np.stack([frame, frame + 1]))


def test_pycromanager_acquisition_with_the_hook(run: Path, tmp_path: Path) -> None:
    """A pycromanager Acquisition of 50 time points on the in-process core, with the hook, stores 50 denoised
    frames (bit-identical to the server's denoiser on the raw frames the hook kept); the process leaves no
    thread behind and exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "mm_acquisition.py"), str(run),
                           str(tmp_path), "50"], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["hook_frames"] == result["hook_denoised"] == 50 and result["hook_errors"] == 0
    assert result["stored"] == result["raw_saved"] == result["raw_metadata"] == result["flagged"] == 50
    assert result["dtypes"] == ["uint16"] and result["identical"] and result["differs_from_raw"]
    assert result["server_frames_out"] == 50
    assert result["threads_left"] == [] and result["engine_released"]
