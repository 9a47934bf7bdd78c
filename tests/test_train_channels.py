"""Issue 32 (per-channel training, in part): `n2n train --channel` takes one channel of a multi-channel file (an
index or the OME channel name), and an OME z-stack is refused for training (its planes are not a time series), as
docs/training.md says; a plain or ImageJ stack labelled Z is still read as frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import tiny_train_dict

from streamer.sources import StackError, read_stack


def two_channels(path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = np.stack([rng.poisson(100, (4, 64, 64)), rng.poisson(900, (4, 64, 64))], axis=1).astype(np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    return data


def test_a_channel_by_name_or_index_and_a_wrong_one_named(tmp_path: Path) -> None:
    path = tmp_path / "two.ome.tif"
    data = two_channels(path)
    assert np.array_equal(read_stack(path, channel="GFP"), data[:, 1])
    assert np.array_equal(read_stack(path, channel=0), data[:, 0])
    with pytest.raises(StackError, match=r"expected a channel index 0\.\.1 or a name \('DAPI', 'GFP'\)"):
        read_stack(path, channel="mCherry")
    with pytest.raises(StackError, match="single-channel"):
        read_stack(path)  # several channels are not consecutive frames
    one = tmp_path / "one.ome.tif"
    tifffile.imwrite(one, data[:, 0], ome=True, metadata={"axes": "TYX"})
    with pytest.raises(StackError, match="expected a file with a channel axis"):
        read_stack(one, channel="GFP")


def test_an_ome_z_stack_is_refused_for_training_and_an_imagej_one_read_as_frames(tmp_path: Path) -> None:
    data = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    ome = tmp_path / "z.ome.tif"
    tifffile.imwrite(ome, data, ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(StackError, match="got a z-stack of 4 planes"):
        read_stack(ome, ome_z_as_time=False)
    assert np.array_equal(read_stack(ome), data)  # (replay and other readers: as before, with a warning)
    imagej = tmp_path / "z_imagej.tif"
    tifffile.imwrite(imagej, data, imagej=True, metadata={"axes": "ZYX"})
    assert np.array_equal(read_stack(imagej, ome_z_as_time=False), data)


def _n2n(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "n2n", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_n2n_train_channel_trains_on_that_channel_and_refuses_a_z_stack(tmp_path: Path) -> None:
    path = tmp_path / "two.ome.tif"
    data = two_channels(path)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_train_dict(quantize={"int8": False})))
    run = tmp_path / "gfp"
    proc = _n2n("train", "--config", cfg, "--data", path, "--channel", "GFP", "--out", run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads((run / "model.json").read_text())
    assert card["training"]["data"]["data"][0]["shape"] == list(data[:, 1].shape)
    assert card["training"]["config"]["data"]["channel"] == "GFP"
    assert card["normalization"]["mean"] > 500  # fitted on the GFP frames (mean ~900), not DAPI's (~100)
    z = tmp_path / "z.ome.tif"
    tifffile.imwrite(z, data[:, 0], ome=True, metadata={"axes": "ZYX"})
    refused = _n2n("train", "--config", cfg, "--data", z, "--out", tmp_path / "z")
    assert refused.returncode == 2 and "z-stack" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "z").exists()


def test_n2n_train_per_channel_writes_a_model_per_channel_and_the_set(tmp_path: Path) -> None:
    """--per-channel on a 2-channel OME-TIFF: a run per channel (each fitted on its own channel's frames) and a
    models.yaml that routes each channel to its run; a single-channel file and --channel with it refused."""
    from streamer.core.modelset import ModelSet

    path = tmp_path / "two.ome.tif"
    two_channels(path)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_train_dict(quantize={"int8": False})))
    out = tmp_path / "set"
    proc = _n2n("train", "--config", cfg, "--data", path, "--per-channel", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    models = ModelSet.load(out / "models.yaml")
    assert models.channels == {"DAPI": str((out / "DAPI").resolve()), "GFP": str((out / "GFP").resolve())}
    means = {}
    for name in ("DAPI", "GFP"):
        card = json.loads((out / name / "model.json").read_text())
        assert card["training"]["config"]["data"]["channel"] == name
        means[name] = card["normalization"]["mean"]
    assert means["DAPI"] < 300 < 500 < means["GFP"]  # each fitted on its own channel (~100 and ~900)
    assert "n2n serve --model" in proc.stdout + proc.stderr
    one = tmp_path / "one.ome.tif"
    tifffile.imwrite(one, np.zeros((4, 64, 64), np.uint16), ome=True, metadata={"axes": "TYX"})
    refused = _n2n("train", "--config", cfg, "--data", one, "--per-channel", "--out", tmp_path / "x")
    assert refused.returncode == 2 and "multi-channel" in refused.stderr and "Traceback" not in refused.stderr
    both = _n2n("train", "--config", cfg, "--data", path, "--per-channel", "--channel", "GFP", "--out", tmp_path / "y")
    assert both.returncode == 2 and "expected one, got both" in both.stderr
    again = _n2n("train", "--config", cfg, "--data", path, "--per-channel", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # the runs are never replaced silently
