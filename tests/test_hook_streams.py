"""Issue 32, first step: the pycromanager hook keys a K-frame model's history by where an image comes from (its
Axes without time), so a 2-channel acquisition called in event order (t0 c0, t0 c1, t1 c0 …) is denoised per
channel, as one stream per channel would be, never from the other channel's frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_train_dict
from serverkit import camera_frames, config

from streamer.core.streams import stream_key
from streamer.micromanager import denoise_hook
from streamer.server import load_denoiser, running_server
from trainer.config import TrainConfig

K = 3


@pytest.fixture(scope="module")
def k_run(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny K = 3 run on the session's simulated frames."""
    from trainer.run import run_training

    out = tmp_path_factory.mktemp("hook_streams") / "k3"
    run_training(TrainConfig.model_validate(tiny_train_dict(model={"input_frames": K}, quantize={"int8": False})),
                 out, [trained_run["raw"]], [trained_run["truth"]])
    return out


def test_the_stream_key_is_the_axes_without_time() -> None:
    assert stream_key({"time": 4, "channel": "GFP", "z": 2}) == {"channel": "GFP", "z": 2}
    assert stream_key({"time": 0}) is None and stream_key(None) is None and stream_key("x") is None
    assert stream_key({"z": 1, "channel": "DAPI"}) == stream_key({"channel": "DAPI", "z": 1, "time": 9})
    assert list(stream_key({"z": 1, "channel": "DAPI", "position": 0}) or {}) == ["channel", "position", "z"]


def test_two_channels_in_event_order_are_denoised_each_from_its_own_history(k_run: Path) -> None:
    """Two channels of different brightness interleaved as pycromanager calls the hook: every image equals the
    Denoiser given the previous images of its own channel only (and differs from the mixed history's answer)."""
    dim = camera_frames(4, seed=61)
    bright = (camera_frames(4, seed=62).astype(np.float32) * 3).clip(0, 65535).astype(np.uint16)
    channels = {"DAPI": dim, "GFP": bright}
    den = load_denoiser(k_run, config())
    with running_server(k_run, config(motion_threshold=None)) as server, denoise_hook(server.endpoints) as hook:
        got = {name: [] for name in channels}
        for t in range(4):
            for name, frames in channels.items():
                image, meta = hook(frames[t], {"Axes": {"time": t, "channel": name}})
                assert meta["n2n-denoised"] is True
                got[name].append(image)
    for name, frames in channels.items():
        for t in range(4):
            previous = list(frames[max(0, t - (K - 1)):t])
            want = den(frames[t], previous=previous)
            assert want.dtype == np.uint16
            assert np.array_equal(got[name][t], want), (name, t)
    mixed = den(bright[1], previous=[dim[0], bright[0], dim[1]][-(K - 1):])  # what one stream for all gave
    assert not np.array_equal(got["GFP"][1], mixed)
    assert hook.frames == hook.denoised == 8 and hook.errors == 0


def test_the_hook_channels_benchmark_runs_and_reports_both_histories(k_run: Path, tmp_path: Path) -> None:
    """python -m bench.hook_channels on the tiny K = 3 model: every image through the hook both ways, a score per
    channel for raw, one history and per channel, the table and the JSON saying the same."""
    import json

    from bench import hook_channels

    out = tmp_path / "hook.json"
    assert hook_channels.main(["--model", str(k_run), "--frames", "4", "--size", "64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["channels"]) == set(hook_channels.CHANNELS)
    for counts in report["hook"].values():
        assert counts == {"frames": 8, "denoised": 8, "errors": 0}
    for row in report["channels"].values():
        assert all(0 < row[k] < 100 for k in ("psnr_raw_db", "psnr_one_history_db", "psnr_per_channel_db"))
    lines = hook_channels.table(report).splitlines()[2:]
    assert len(lines) == 2
    for line, (name, row) in zip(lines, report["channels"].items()):
        assert line.startswith(f"| {name} |") and f"{row['psnr_per_channel_db']:.2f} dB" in line
