"""``n2n train`` refuses stacks of pixel types no camera gives (float64, int8) in one line unless asked
(data.accept_dtype), and a full disk while saving a checkpoint is one line naming the folder: no ``.tmp`` left,
the previous checkpoint intact. The full disk is RLIMIT_FSIZE in a child process (EFBIG, taken as ENOSPC):
no mount needed."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import tiny_train_dict
from test_cli_errors import n2n

from bench.faults_files import limited_command
from trainer.config import TrainConfig
from trainer.run import run_training


def stack(tmp_path: Path, dtype: str) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / f"stack_{dtype}.tif"
    tifffile.imwrite(path, rng.integers(0, 100, (6, 64, 64)).astype(dtype))
    return path


@pytest.mark.parametrize("dtype", ["float64", "int8"])
def test_train_refuses_a_stack_of_another_pixel_type_in_one_line(tmp_path: Path, dtype: str) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_train_dict()))
    data = stack(tmp_path, dtype)

    result = n2n("train", "--config", config, "--data", data, "--out", tmp_path / "run")

    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {data}: expected frames of uint8, uint16 or float32, got {dtype};")
    assert "data.accept_dtype=true" in lines[0]


def test_train_takes_another_pixel_type_when_asked(tmp_path: Path) -> None:
    config = TrainConfig.model_validate(tiny_train_dict(data={"accept_dtype": True}, optim={"epochs": 1}))
    card = run_training(config, tmp_path / "run", [stack(tmp_path, "float64")])
    assert card.input_dtype == "float64"


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    data = stack(tmp_path, "uint16")
    run = tmp_path / "run"
    for epochs in (1, 2):
        (tmp_path / f"tiny{epochs}.yaml").write_text(yaml.safe_dump(tiny_train_dict(optim={"epochs": epochs})))
    assert n2n("train", "--config", tmp_path / "tiny1.yaml", "--data", data, "--out", run).exit_code == 0
    checkpoint = run / "checkpoint.pt"
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    proc = subprocess.run(limited_command(checkpoint.stat().st_size // 2, "train", "--resume", "--config",
                                          str(tmp_path / "tiny2.yaml"), "--data", str(data), "--out", str(run)),
                          capture_output=True, text=True, timeout=600)

    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert lines[-1].startswith(f"error: {run}: no space left to save checkpoint.pt (File too large)"), lines
    assert "inline_container" not in proc.stdout + proc.stderr
    assert not list(run.glob("*.tmp"))
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before
