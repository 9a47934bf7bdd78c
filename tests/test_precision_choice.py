"""Precision ``auto`` decides once per model and machine: the choice it timed is recorded in the model folder
(``precision_choice.json``) and taken again on the next start, so the same command gives the same pixels on
another day; ``retime`` (``--retime``), another machine, library or export times again; a read-only model folder
still serves; and ``n2n evaluate`` scores what ``n2n serve`` runs."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from streamer.core.card import ModelCard
from streamer.denoiser import Denoiser
from streamer.engines import CHOICE_NAME, Engine, create_engine

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray]:
    from streamer.sources import SimulatedCameraConfig, simulate_stack

    return simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=7), 6)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory, stack: tuple[np.ndarray, np.ndarray]) -> Path:
    """A tiny run with a kept INT8 export (a loose limit): auto has several precisions to time."""
    from conftest import train_tiny

    run, card = train_tiny(tmp_path_factory.mktemp("choice"), stack[0], optim={"epochs": 1, "steps_per_epoch": 4},
                           quantize={"int8": True, "max_loss_db": 20.0, "calibration_patches": 4, "patch_size": 32})
    assert card.quantization is not None and card.quantization.status == "kept", card.quantization
    return run


@pytest.fixture
def model(int8_model: Path, tmp_path: Path) -> Path:
    """A private copy of the INT8 run, with no choice recorded yet."""
    dst = tmp_path / "run"
    shutil.copytree(int8_model, dst)
    (dst / CHOICE_NAME).unlink(missing_ok=True)
    return dst


def counted(engine: Engine) -> list[str]:
    """Count the engine's timing runs (the real ones run): one entry per precision timed."""
    timed: list[str] = []
    real = engine._time

    def time_and_count(compiled: Any, x: np.ndarray, budget_s: float = 1.0) -> float:
        timed.append(str(compiled))
        return real(compiled, x, budget_s)

    engine._time = time_and_count  # type: ignore[method-assign]
    return timed


def served(model_dir: Path, frame: np.ndarray, **kwargs: Any) -> tuple[Denoiser, list[str], np.ndarray]:
    den = Denoiser.from_model_dir(model_dir, "openvino", "auto", num_threads=1, output_dtype="float32", **kwargs)
    timed = counted(den.engine)
    out = den(frame)
    den.engine.close()
    return den, timed, out


def records(model_dir: Path) -> list[dict[str, Any]]:
    return list(json.loads((model_dir / CHOICE_NAME).read_text())["choices"].values())


def test_a_second_start_takes_the_recorded_choice_without_timing(model: Path,
                                                                 stack: tuple[np.ndarray, np.ndarray]) -> None:
    """The first auto times its candidates and records the winner; the next one takes it untimed and gives the
    same pixels, bit for bit."""
    frame = stack[0][-1]
    first, timed_first, out_first = served(model, frame)

    assert timed_first and "fastest here:" in first.engine.precision_note
    [entry] = records(model)
    assert entry["precision"] == first.engine.precision
    assert first.engine.precision in entry["times_ms"] and entry["shape"] == [1, 1, 64, 64]
    fp = entry["fingerprint"]
    assert fp["engine"] == "openvino" and fp["device"] == "cpu" and fp["library"].startswith("openvino ")
    assert fp["device_name"] and fp["model"]["onnx"] == ModelCard.load(model).artifacts["onnx"].sha256
    assert fp["model"]["openvino_int8"] == ModelCard.load(model).artifacts["openvino_int8"].sha256

    second, timed_second, out_second = served(model, frame)

    assert timed_second == []
    assert second.engine.precision == first.engine.precision
    assert (f"{first.engine.precision} (chosen on {entry['date'][:10]} on this machine; --retime to time again)"
            in second.engine.precision_note)
    assert "fastest here:" not in second.engine.precision_note
    np.testing.assert_array_equal(out_second, out_first)


def test_retime_times_again_and_records_anew(model: Path, stack: tuple[np.ndarray, np.ndarray]) -> None:
    frame = stack[0][-1]
    served(model, frame)
    again, timed, _ = served(model, frame, retime=True)

    assert timed and "fastest here:" in again.engine.precision_note
    [entry] = records(model)  # the same machine: its entry replaced, not a second one
    assert entry["precision"] == again.engine.precision


def test_another_fingerprint_is_timed_and_kept_beside(model: Path, stack: tuple[np.ndarray, np.ndarray]) -> None:
    """A record made on another machine (or with another library, or for another export) is not this machine's:
    auto times again and records its own beside it."""
    frame = stack[0][-1]
    served(model, frame)
    [entry] = records(model)
    other = {**entry, "fingerprint": {**entry["fingerprint"], "device_name": "another CPU"}}
    (model / CHOICE_NAME).write_text(json.dumps({"version": 1, "choices": {"elsewhere": other}}))

    den, timed, _ = served(model, frame)

    assert timed and "fastest here:" in den.engine.precision_note
    found = records(model)
    assert len(found) == 2 and {e["fingerprint"]["device_name"] for e in found} == {
        "another CPU", entry["fingerprint"]["device_name"]}


def test_a_re_exported_model_is_timed_again(model: Path, stack: tuple[np.ndarray, np.ndarray]) -> None:
    """The model's files are part of the fingerprint: another sha256 (a re-export) times again."""
    frame = stack[0][-1]
    served(model, frame)
    card = ModelCard.load(model)
    engine = create_engine("openvino", card, precision="auto", num_threads=1)
    engine.model_key = {**engine.model_key, "onnx": "0" * 64}  # what a re-exported model.onnx would bring
    timed = counted(engine)
    engine.prepare((1, 1, 64, 64))

    assert timed and "fastest here:" in engine.precision_note
    assert len(records(model)) == 2


def test_a_recorded_precision_that_no_longer_passes_is_timed_again(model: Path,
                                                                   stack: tuple[np.ndarray, np.ndarray]) -> None:
    frame = stack[0][-1]
    served(model, frame)
    [entry] = records(model)
    engine = create_engine("openvino", ModelCard.load(model), precision="auto", num_threads=1)
    key = engine._fingerprint_key(entry["fingerprint"])
    (model / CHOICE_NAME).write_text(json.dumps({"version": 1, "choices": {key: {**entry, "precision": "fp16"}}}))
    timed = counted(engine)
    engine.prepare((1, 1, 64, 64))

    assert timed and "recorded choice fp16 did not pass its check: timing again" in engine.precision_note
    assert engine.precision != "fp16" and records(model)[0]["precision"] == engine.precision


def test_a_damaged_record_is_ignored(model: Path, stack: tuple[np.ndarray, np.ndarray]) -> None:
    (model / CHOICE_NAME).write_text("{ not json")
    den, timed, out = served(model, stack[0][-1])

    assert timed and np.isfinite(out).all()
    assert records(model)[0]["precision"] == den.engine.precision


@pytest.fixture
def read_only(model: Path) -> Iterator[Path]:
    """The model folder made read-only (as a shared folder or a package cache may be); where this process may
    write anyway (root), the record's path is taken by a folder, so writing it fails all the same."""
    if os.geteuid() == 0:
        (model / CHOICE_NAME).mkdir()
        (model / CHOICE_NAME / "taken").write_text("")
    mode = model.stat().st_mode
    model.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        yield model
    finally:
        model.chmod(mode)


def test_a_read_only_model_folder_still_serves(read_only: Path, stack: tuple[np.ndarray, np.ndarray]) -> None:
    frame = stack[0][-1]
    first, timed_first, out_first = served(read_only, frame)
    _, timed_second, _ = served(read_only, frame)

    assert out_first.shape == frame.shape and np.isfinite(out_first).all()
    assert timed_first and timed_second  # nothing recorded: each start times
    assert not (read_only / CHOICE_NAME).is_file()
    assert first.engine.precision in ("fp32", "bf16", "int8")


def test_evaluate_by_default_scores_what_serve_runs(model: Path, tmp_path: Path, write_stack: Any,
                                                    stack: tuple[np.ndarray, np.ndarray]) -> None:
    """`n2n evaluate` with no engine or precision scores the engine and precision `n2n serve`'s defaults pick
    (Denoiser.from_model_dir with its defaults), and says so under its table and in its report."""
    from n2n.cli import app

    raw, truth = stack
    serve = Denoiser.from_model_dir(model)
    serve(raw[0])  # the first frame decides, as in the server
    engine, precision = serve.engine.name, serve.engine.precision
    serve.engine.close()

    data, ref = write_stack(tmp_path / "raw.tif", raw), write_stack(tmp_path / "truth.tif", truth)
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(data), "--reference",
                                      str(ref), "--max-frames", "2", "--json", str(report_path)])

    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert (report["engine"], report["precision"]) == (engine, precision)
    assert report["requested_engine"] == report["requested_precision"] == "auto" and report["served_default"]
    assert f"scored: {engine} {precision} on {report['device']} (the default, as n2n serve runs it)" in " ".join(
        result.output.split())
    if (model / CHOICE_NAME).is_file():  # auto timed on the first start: evaluate took that choice untimed
        assert "chosen on" in report["precision_note"]


def test_evaluate_says_what_it_was_asked_for(model: Path, tmp_path: Path, write_stack: Any,
                                             stack: tuple[np.ndarray, np.ndarray]) -> None:
    from n2n.cli import app

    raw, truth = stack
    data, ref = write_stack(tmp_path / "raw.tif", raw), write_stack(tmp_path / "truth.tif", truth)
    result = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(data), "--reference",
                                      str(ref), "--max-frames", "2", "--engine", "onnxruntime", "--precision",
                                      "fp32"])

    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "scored: onnxruntime fp32 on cpu (as asked: --engine onnxruntime --precision fp32;" in text
    assert not (model / CHOICE_NAME).exists()  # fp32 times nothing and records nothing


@pytest.mark.parametrize("command", [["serve"], ["denoise", "in.tif", "--out", "out.zarr"], ["evaluate"],
                                     ["bridge"]])
def test_retime_flag_sets_the_config_key(command: list[str], tmp_path: Path) -> None:
    """--retime reaches the config of every command that takes --precision (shown by --dry-run)."""
    from n2n.cli import app

    args = [*command, "--model", str(tmp_path), "--retime", "--dry-run"]
    if command == ["evaluate"]:
        args += ["--data", "raw.tif", "--reference", "ref.tif"]
    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    assert "retime: true" in result.output
