"""Every bad input a new user meets gives one line ``error: …`` naming the file or flag, the key, what was
expected and what came; exit status 2; no traceback (through the real CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from n2n.cli import app, expand_multi_value


def n2n(*args: str | Path) -> Result:
    return CliRunner().invoke(app, expand_multi_value([str(a) for a in args]))


def assert_one_error_line(output: str, exit_code: int, expected: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert exit_code == 2, output
    assert "Traceback" not in output
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{output}"
    assert lines[0] == f"error: {expected}", lines[0]


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """A binary file (a TIFF header), an empty YAML file and a YAML list."""
    files = {"binary": tmp_path / "some.tif", "empty": tmp_path / "empty.yaml", "list": tmp_path / "list.yaml"}
    files["binary"].write_bytes(b"II*\x00\x08\x00\x00\x00" + bytes(range(256)) * 4)
    files["empty"].write_text("")
    files["list"].write_text("- 1\n- 2\n")
    return files


@pytest.mark.parametrize(("args", "expected"), [
    (["export", "--model", "X", "--format", "tensorrt"],
     "--format: expected 'onnx', 'torchscript', 'int8' or 'bioimageio', got 'tensorrt'"),
    (["train", "--out", "r", "--config", "{binary}"], "{binary}: expected a YAML config (text), got a binary file"),
    (["train", "--out", "r", "--config", "{empty}"],
     "{empty}: expected a mapping of settings (key: value lines), got an empty file"),
    (["serve", "--model", "X", "--config", "{list}"],
     "{list}: expected a mapping of settings (key: value lines), got a list ([1, 2])"),
    (["dash", "--stats-address", "foo"],
     "--stats-address: expected a ZeroMQ address such as tcp://127.0.0.1:5558, got 'foo' "
     "(Invalid argument (addr='foo'))"),
    (["simulate", "--out", "x.tif", "--size", "4"], "--size: expected a number >= 8, got 4"),
    (["train", "--out", "r", "--epochs", "0"], "--epochs: expected a number >= 1, got 0"),
    (["train", "--out", "r", "--target", "care"], "--target: expected 'n2n' or 'supervised', got 'care'"),
    (["train", "--out", "r", "--set", "optim.lr=1"],
     "--set optim.lr: expected one of the keys batch_size, epochs, steps_per_epoch, learning_rate, "
     "min_learning_rate, warmup_steps, early_stopping_patience, max_minutes, precision, device, seed, num_threads, "
     "adapt_threads, "
     "got 'lr'"),
    (["train", "--out", "r", "--set", "model.depth"], "--set: expected KEY=VALUE (e.g. --set model.depth=3), "
                                                      "got 'model.depth'"),
    (["serve", "--model", "X", "--input-address", "localhost:5555"],
     "--input-address: expected an address starting with one of tcp://, ipc://, inproc://, got 'localhost:5555'"),
    (["bridge", "--model", "X", "--precision", "int4"],
     "--precision: expected 'auto', 'fp32', 'bf16', 'fp16' or 'int8', got 'int4'"),
    (["bridge", "--frames", "-1"], "--frames: expected 0 (until Ctrl-C) or more, got -1"),
    (["bench", "--model", "X", "--transport", "udp"], "--transport: expected 'tcp' or 'ipc', got 'udp'"),
    (["frontier", "--size", "512,big"], "--size: expected a comma list of integers (e.g. 512,2048), got '512,big'"),
    (["demo", "--config", "{binary}"], "{binary}: expected a YAML config (text), got a binary file"),
])
def test_bad_input_is_one_error_line(args: list[str], expected: str, bad_files: dict[str, Path]) -> None:
    """Each bad input: exit 2, one line `error: …` saying where, what was expected and what came."""
    args = [a.format(**bad_files) for a in args]

    result = n2n(*args)

    assert_one_error_line(result.output, result.exit_code, expected.format(**bad_files))


def test_frame_size_mismatch_names_both_files(trained_run: dict[str, Path], tmp_path: Path, write_stack) -> None:
    """`n2n evaluate` with a reference of another frame size names the reference and the data file."""
    ref = write_stack(tmp_path / "ref.tif", np.ones((2, 32, 32), np.float32))

    result = n2n("evaluate", "--model", trained_run["run"], "--data", trained_run["raw"], "--reference", ref)

    assert_one_error_line(result.output, result.exit_code,
                          f"--reference {ref}: expected frames of 64x64, one or 6 of them (the shape of --data "
                          f"{trained_run['raw']}), got shape (2, 32, 32)")


@pytest.mark.parametrize(("args", "expected"), [
    (["train", "--out", "r", "--config", "{binary}"], "{binary}: expected a YAML config (text), got a binary file"),
    (["train", "--out", "r", "--epochs", "abc"],
     "n2n train: Invalid value for '--epochs': Input should be a valid integer, unable to parse string as an "
     "integer (see `n2n train --help`)"),
    (["train", "--epochs", "3"], "n2n train: Missing option '--out'. (see `n2n train --help`)"),
    (["serve", "--model", "X", "--bogus", "1"], "n2n serve: No such option: --bogus (see `n2n serve --help`)"),
    (["nosuch"], "n2n: No such command 'nosuch'. (see `n2n --help`)"),
    (["train", "--out", "r", "--set", "nope.x=1"],
     "--set nope.x: expected one of the keys version, mode, model, data, optim, onnx_opset, quantize, got 'nope'"),
    (["dash", "--stats", "foo"], "--stats-address: expected a ZeroMQ address such as tcp://127.0.0.1:5558, "
                                 "got 'foo' (Invalid argument (addr='foo'))"),
])
def test_bad_input_as_a_process(args: list[str], expected: str, bad_files: dict[str, Path]) -> None:
    """The entry point as a user runs it: stderr is one error line (after a deprecation line for an old
    spelling), stdout is empty, exit 2, even on a narrow terminal."""
    proc = subprocess.run([sys.executable, "-m", "n2n", *(a.format(**bad_files) for a in args)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "40"}, timeout=120)

    lines = proc.stderr.splitlines()
    if args[1:2] == ["--stats"]:
        assert lines.pop(0) == "warning: --stats is now --stats-address; the old spelling will be removed in the " \
                               "next release"
    assert_one_error_line("\n".join(lines), proc.returncode, expected.format(**bad_files))
    assert proc.stdout == ""


@pytest.mark.parametrize("args", [
    ["grab", "--mm-config", "sim", "--frames", "3"],
    ["bridge", "--mm-config", "sim", "--model", "no-such-model", "--frames", "3"],
])
def test_a_recording_is_never_written_over(args: list[str], tmp_path: Path) -> None:
    """`n2n grab` and `n2n bridge` into an --out that exists (a rerun with the same command): refused in one line
    before the camera is touched, the earlier recording's bytes as they were (they used to be truncated)."""
    earlier = tmp_path / "cells.ome.tif"
    earlier.write_bytes(b"II*\x00 an earlier recording")

    result = n2n(*args, "--out", earlier)

    other = ", or --no-save" if args[0] == "bridge" else ""
    assert_one_error_line(result.output, result.exit_code,
                          f"{earlier} exists: expected a new --out{other} (a recording is never written over; move "
                          "that file first to use its name again)")
    assert earlier.read_bytes() == b"II*\x00 an earlier recording"
