"""`n2n train` never replaces a run silently nor leaves a half-made one: a finished run is refused without
--overwrite, a failed start leaves no folder, and Ctrl-C after epoch 2 leaves a usable run, marked partial, that a
server serves (real processes, a real SIGINT)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from waiting import ctrl_c_when

from streamer.core.card import ModelCard


def _n2n(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "n2n", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"})


@pytest.fixture
def tiny_yaml(tmp_path: Path, tiny_config_dict: Any) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(data={"source": "simulated"})))
    return path


def test_a_finished_run_is_refused_without_overwrite_and_replaced_with_it(tmp_path: Path, tiny_yaml: Path) -> None:
    """The second train into the same --out exits 2 with one line and the run untouched; --overwrite retrains."""
    out = tmp_path / "run"
    first = _n2n("train", "--config", tiny_yaml, "--out", out)
    assert first.returncode == 0, first.stderr[-2000:]
    card_before = (out / "model.json").read_bytes()

    again = _n2n("train", "--config", tiny_yaml, "--out", out, "--epochs", "1")

    errors = [ln for ln in again.stderr.splitlines() if ln.startswith("error:")]
    assert again.returncode == 2 and len(errors) == 1 and "Traceback" not in again.stderr
    assert "finished run" in errors[0] and "--overwrite" in errors[0] and "--resume" in errors[0]
    assert (out / "model.json").read_bytes() == card_before

    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    failed = _n2n("train", "--config", tiny_yaml, "--out", out, "--overwrite", "--data", bad)
    assert failed.returncode == 2 and (out / "model.json").read_bytes() == card_before  # a failed start keeps it

    replaced = _n2n("train", "--config", tiny_yaml, "--out", out, "--epochs", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert ModelCard.load(out).training["epochs"] == 1


def test_a_failed_start_leaves_no_folder(tmp_path: Path, tiny_yaml: Path) -> None:
    """Training data that cannot be read: one error line, and the --out folder it would have made is not there."""
    out = tmp_path / "never"
    proc = _n2n("train", "--config", tiny_yaml, "--data", tmp_path / "missing.tif", "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not out.exists()


def test_ctrl_c_at_epoch_2_leaves_a_run_that_serves(tmp_path: Path, tiny_config_dict: Any) -> None:
    """SIGINT once two epochs are checkpointed: exit 130, the best epoch so far exported and marked partial, the
    way on printed; the run loads and a Denoiser (what n2n serve runs) denoises a frame with it."""
    cfg = tiny_config_dict(optim={"epochs": 400, "steps_per_epoch": 5}, data={"source": "simulated"})
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "n2n", "train", "--config", str(path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"})

    def two_epochs() -> bool:
        ckpt = out / "checkpoint.pt"
        if not ckpt.exists():
            return False
        try:
            return torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] >= 2
        except Exception:  # (replaced while read)
            return False

    err = ctrl_c_when(proc, two_epochs, "two epochs checkpointed")

    assert proc.returncode == 130, err[-2000:]
    assert "partial" in err and "--resume" in err
    card = ModelCard.load(out)
    assert card.training["partial"] is True and 2 <= card.training["epochs"] < 400
    assert "interrupted" in card.training["stopped"]
    from streamer.server import ServeConfig, load_denoiser

    den = load_denoiser(out, ServeConfig(num_threads=1))
    frame = np.random.default_rng(0).poisson(300, (64, 64)).astype(np.uint16)
    result = den(frame)
    assert result.shape == frame.shape and result.dtype == frame.dtype and not np.array_equal(result, frame)
    den.engine.close()
    again = _n2n("train", "--config", path, "--out", out)
    assert again.returncode == 2 and "holds a partial run" in again.stderr and "--resume" in again.stderr
