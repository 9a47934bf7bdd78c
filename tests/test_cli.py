"""The ``n2n`` command line, invoked in-process through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner, Result

from n2n.cli import app, expand_multi_value
from streamer.sources import read_stack
from trainer.card import file_digest, read_card

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def n2n(*args: str | Path) -> Result:
    """Run ``n2n ARGS`` as the console entry point would (multi-value options expanded)."""
    return CliRunner().invoke(app, expand_multi_value([str(a) for a in args]))


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}:\n{result.output}\n{result.exception!r}"


@pytest.fixture
def tiny_yaml(tmp_path: Path, tiny_config_dict) -> Path:
    """The tiny training config as a YAML file."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict()))
    return path


def test_expand_multi_value() -> None:
    """--data A B becomes --data A --data B; other options and single values are untouched."""
    argv = ["train", "--data", "a.tif", "b.tif", "c.tif", "--out", "r", "--reference", "x.tif", "--epochs", "3"]

    assert expand_multi_value(argv) == ["train", "--data", "a.tif", "--data", "b.tif", "--data", "c.tif",
                                        "--out", "r", "--reference", "x.tif", "--epochs", "3"]
    assert expand_multi_value(["simulate", "--out", "a", "b"]) == ["simulate", "--out", "a", "b"]


def test_help_lists_commands() -> None:
    """n2n --help lists the simulate, train, export and evaluate commands."""
    result = n2n("--help")

    assert_ok(result)
    for command in ("simulate", "train", "export", "evaluate"):
        assert command in result.output


def test_simulate_writes_readable_stacks(tmp_path: Path) -> None:
    """simulate writes raw (uint16) and truth (float32) stacks of the asked size, plus a JSON sidecar."""
    raw_path, truth_path = tmp_path / "sim" / "raw.tif", tmp_path / "sim" / "truth.tif"

    result = n2n("simulate", "--out", raw_path, "--truth", truth_path, "--frames", 3, "--size", 32, "--seed", 4)

    assert_ok(result)
    raw, truth = read_stack(raw_path), read_stack(truth_path)
    assert raw.shape == truth.shape == (3, 32, 32)
    assert raw.dtype == np.uint16 and truth.dtype == np.float32
    assert abs(raw.mean() - truth.mean()) < 0.05 * truth.mean()
    sidecar = json.loads(raw_path.with_suffix(".json").read_text())
    assert sidecar["frames"] == 3 and sidecar["camera"]["seed"] == 4 and sidecar["truth"] == "truth.tif"


def test_simulate_dry_run(tmp_path: Path) -> None:
    """simulate --dry-run prints the config with flag overrides and writes nothing."""
    result = n2n("simulate", "--out", tmp_path / "raw.tif", "--frames", 7, "--exposure-ms", 2.5, "--dry-run")

    assert_ok(result)
    cfg = yaml.safe_load(result.stdout)
    assert cfg["frames"] == 7 and cfg["camera"]["exposure_ms"] == 2.5
    assert list(tmp_path.iterdir()) == []


def test_train_on_files(tmp_path: Path, tiny_yaml: Path, sim_stack, write_stack) -> None:
    """train --data a.tif b.tif trains on both files and leaves model.pt/onnx/json and config.yaml."""
    raw = sim_stack[0]
    a = write_stack(tmp_path / "a.tif", raw)
    b = write_stack(tmp_path / "b.tif", raw[::-1].copy())
    out = tmp_path / "run"

    result = n2n("train", "--config", tiny_yaml, "--out", out, "--data", a, b, "--epochs", 1)

    assert_ok(result)
    text = " ".join(result.output.split())
    assert f"n2n serve --model {out}" in text and f"n2n bridge --model {out}" in text  # the next step
    assert f"n2n evaluate --model {out} --data OTHER_FRAMES.tif" in text  # no reference here: the estimate
    for name in ("model.pt", "model.onnx", "model.ts", "model.json", "config.yaml", "checkpoint.pt"):
        assert (out / name).is_file(), name
    card = read_card(out)
    assert [Path(d["path"]).name for d in card.training["data"]["data"]] == ["a.tif", "b.tif"]
    assert card.training["epochs"] == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["epochs"] == 1
    assert card.artifacts["onnx"].sha256 == file_digest(out / "model.onnx")


def test_train_dry_run(tmp_path: Path, tiny_yaml: Path) -> None:
    """train --dry-run prints the resolved config with overrides applied and writes nothing."""
    out = tmp_path / "run"

    result = n2n("train", "--config", tiny_yaml, "--out", out, "--epochs", 7, "--seed", 42,
                 "--target", "supervised", "--minutes", 0.5, "--data", tmp_path / "x.tif", "--dry-run")

    assert_ok(result)
    cfg = yaml.safe_load(result.stdout)
    assert cfg["optim"]["epochs"] == 7 and cfg["optim"]["seed"] == 42 and cfg["optim"]["max_minutes"] == 0.5
    assert cfg["mode"] == "supervised" and cfg["data"]["source"] == "files"
    assert cfg["model"]["base_filters"] == 8  # from the file
    assert not out.exists()


def test_export_torchscript(run_copy: Path) -> None:
    """export --format torchscript (re)writes model.ts and records it beside onnx in model.json."""
    (run_copy / "model.ts").unlink()
    result = n2n("export", "--model", run_copy, "--format", "torchscript")

    assert_ok(result)
    assert "model.ts" in result.stdout
    card = read_card(run_copy)
    assert set(card.artifacts) == {"onnx", "torchscript"}
    assert card.artifacts["torchscript"].sha256 == file_digest(run_copy / "model.ts")
    assert card.artifacts["torchscript"].parity_rel_error < 1e-4


def test_export_refused_exits_2(run_copy: Path, tmp_path: Path) -> None:
    """An ONNX export beyond the configured error limit exits 2 with a clear error, no traceback."""
    strict = tmp_path / "strict.yaml"
    strict.write_text("version: 1\nformat: onnx\nmax_rel_error: 1.0e-30\ncheck_size: 16\n")

    result = n2n("export", "--model", run_copy, "--config", strict)

    _assert_user_error(result, "ONNX export refused", "exceeds 1e-30")
    assert read_card(run_copy).artifacts["onnx"].parity_rel_error < 1e-4  # card not overwritten


def test_evaluate_writes_json_and_figure(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """evaluate --json --figure writes a JSON report with the metrics and a PNG."""
    report_path, fig = tmp_path / "out" / "report.json", tmp_path / "out" / "fig.png"

    result = n2n("evaluate", "--model", trained_run["run"], "--data", trained_run["raw"],
                 "--reference", trained_run["truth"], "--json", report_path, "--figure", fig, "--max-frames", 4)

    assert_ok(result)
    report = json.loads(report_path.read_text())
    assert report["frames"] == 4
    for key in ("psnr_raw", "psnr_denoised", "ssim_raw", "ssim_denoised", "psnr_gaussian", "psnr_average2"):
        assert np.isfinite(report[key])
    assert report["model"] == str(trained_run["run"])
    assert fig.read_bytes()[:8] == PNG_MAGIC and fig.stat().st_size > 20_000
    assert "PSNR" in result.stdout


def test_evaluate_without_a_reference_estimates_the_gain(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """evaluate without --reference: the estimated gain of the model and of a Gaussian filter, a raw | Gaussian |
    denoised figure, and it says where the figure and the report went."""
    report_path, fig = tmp_path / "report.json", tmp_path / "fig.png"

    result = n2n("evaluate", "--model", trained_run["run"], "--data", trained_run["raw"], "--json", report_path,
                 "--figure", fig)

    assert_ok(result)
    report = json.loads(report_path.read_text())
    assert report["reference"] is None and report["pairs"] >= 1
    assert np.isfinite(report["estimated_gain_db"]) and np.isfinite(report["estimated_gain_db_gaussian"])
    assert fig.read_bytes()[:8] == PNG_MAGIC
    text = " ".join(result.output.split())
    assert "gain over raw" in text and f"figure: {fig}" in text and f"report: {report_path}" in text


def _assert_user_error(result: Result, *fragments: str) -> None:
    text = " ".join(result.output.split())  # undo Rich's line wrapping
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{result.output}\n{result.exception!r}"
    assert "error:" in text
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def test_train_missing_data_file(tmp_path: Path, tiny_yaml: Path) -> None:
    """train with a missing --data file exits 2 with 'error: ... no such file' and no traceback."""
    result = n2n("train", "--config", tiny_yaml, "--out", tmp_path / "run", "--data", tmp_path / "nope.tif")

    _assert_user_error(result, "nope.tif", "no such file")


def test_train_bad_config_key(tmp_path: Path, tiny_config_dict) -> None:
    """train with an unknown config key exits 2 naming the key."""
    cfg = tiny_config_dict()
    cfg["optim"]["epochz"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))

    result = n2n("train", "--config", path, "--out", tmp_path / "run")

    _assert_user_error(result, f"{path}: optim: expected one of the keys batch_size, epochs,", "got 'epochz'",
                       "(did you mean 'epochs'?)")
    assert not (tmp_path / "run").exists()


def test_train_single_frame_stack(tmp_path: Path, tiny_yaml: Path, sim_stack, write_stack) -> None:
    """train on a one-frame stack exits 2 saying 2 frames are needed."""
    one = write_stack(tmp_path / "one.tif", sim_stack[0][:1])

    result = n2n("train", "--config", tiny_yaml, "--out", tmp_path / "run", "--data", one)

    _assert_user_error(result, "one.tif", "expected at least 2 frames, got 1")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_train_reference_count_mismatch(tmp_path: Path, tiny_yaml: Path, sim_tiff) -> None:
    """train with two --data stacks but one --reference exits 2 explaining the mismatch."""
    raw, truth = sim_tiff

    result = n2n("train", "--config", tiny_yaml, "--out", tmp_path / "run", "--data", raw, raw,
                 "--reference", truth)

    _assert_user_error(result, "one --reference per --data stack: 2 stacks, 1 references")


def test_evaluate_missing_run_folder(tmp_path: Path, sim_tiff) -> None:
    """evaluate with a missing run folder exits 2 saying there is no such model folder."""
    raw, truth = sim_tiff

    result = n2n("evaluate", "--model", tmp_path / "no_run", "--data", raw, "--reference", truth)

    _assert_user_error(result, "no_run", "no such model folder")


def test_evaluate_reference_mismatch(trained_run: dict[str, Path], tmp_path: Path, write_stack) -> None:
    """evaluate with a reference of another size exits 2 naming the expected shapes."""
    ref = write_stack(tmp_path / "ref.tif", np.ones((2, 32, 32), np.float32))

    result = n2n("evaluate", "--model", trained_run["run"], "--data", trained_run["raw"], "--reference", ref)

    _assert_user_error(result, f"--reference {ref}: expected frames of 64x64, one or", f"--data {trained_run['raw']}",
                       "got shape (2, 32, 32)")


def test_export_missing_run_folder(tmp_path: Path) -> None:
    """export of a folder that is not a run exits 2."""
    result = n2n("export", "--model", tmp_path / "nothing")

    _assert_user_error(result, "no such run folder")


def test_export_bad_format_flag(run_copy: Path) -> None:
    """export --format with an unknown format exits 2 naming the allowed formats."""
    result = n2n("export", "--model", run_copy, "--format", "tflite")

    _assert_user_error(result, "--format: expected 'onnx', 'torchscript', 'int8' or 'bioimageio', got 'tflite'")


def test_evaluate_rejects_two_data_files(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """evaluate takes one --data stack; two are refused instead of silently dropping the first."""
    result = n2n("evaluate", "--model", trained_run["run"], "--data", tmp_path / "missing.tif", trained_run["raw"],
                 "--reference", trained_run["truth"])

    assert result.exit_code == 2


def test_train_set_overrides_any_key(tmp_path: Path, tiny_yaml: Path) -> None:
    """--set KEY=VALUE overrides any config key with a YAML value; a malformed one is one error line."""
    out = tmp_path / "run"

    result = n2n("train", "--config", tiny_yaml, "--out", out, "--set", "model.depth=3",
                 "--set", "model.filters=[4, 16, 32, 64]", "--set", "model.skip=add", "--dry-run")

    assert_ok(result)
    model = yaml.safe_load(result.stdout)["model"]
    assert model["depth"] == 3 and model["filters"] == [4, 16, 32, 64] and model["skip"] == "add"
    _assert_user_error(n2n("train", "--out", out, "--set", "model.depth", "--dry-run"),
                       "--set: expected KEY=VALUE", "model.depth")


def test_average_makes_a_reference_and_warns_when_the_field_moved(tmp_path: Path, sim_stack, write_stack) -> None:
    """n2n average writes the float32 mean of the frames asked for (with which in its metadata); a burst whose
    field shifts halfway is warned about, a still one is not."""
    import tifffile

    raw = sim_stack[0]
    still = write_stack(tmp_path / "still.tif", raw)
    out = tmp_path / "ref.ome.tif"

    result = n2n("average", "--data", still, "--out", out, "--first", 1, "--frames", 4)

    assert_ok(result)
    ref = tifffile.imread(out)
    np.testing.assert_allclose(ref, raw[1:5].mean(axis=0), rtol=1e-6)
    assert ref.dtype == np.float32 and "warning" not in result.output
    assert "frames 1..4 (4)" in " ".join(result.output.split())

    moved = np.concatenate([raw[:3], np.roll(raw[3:], 8, axis=2)])
    shifted = n2n("average", "--data", write_stack(tmp_path / "moved.tif", moved), "--out", tmp_path / "m.tif")
    assert_ok(shifted)
    assert "the field changed during the burst" in " ".join(shifted.output.split())

    short = n2n("average", "--data", still, "--out", tmp_path / "x.tif", "--first", len(raw) - 1, "--frames", 2)
    _assert_user_error(short, "expected at least 2 frames")
    assert json.loads((tmp_path / "ref.json").read_text())["n2n-average"]["frames"] == "1..4"
    _assert_user_error(n2n("average", "--data", still, "--out", out), "exists", "--overwrite")
    _assert_user_error(n2n("average", "--data", still, "--out", still, "--overwrite"), "is --data itself")
    assert tifffile.imread(still).shape == raw.shape  # the burst kept
