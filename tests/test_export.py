"""Export to ONNX and TorchScript: parity with PyTorch, dynamic sizes, refusal of bad exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trainer.card import file_digest, read_card
from trainer.export import ExportError, export_onnx, export_torchscript, relative_error
from trainer.inference import load_run
from trainer.unet import UNet


@pytest.fixture(scope="module")
def net() -> UNet:
    """A small random U-Net (depth 2) with a non-trivial output."""
    torch.manual_seed(0)
    return UNet(depth=2, base_filters=4).eval()


def _torch(net: UNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_onnx_parity_on_odd_frames(tmp_path: Path, net: UNet) -> None:
    """The ONNX model passes its own parity check and matches PyTorch on odd-sized frames and batches."""
    path = tmp_path / "model.onnx"

    info = export_onnx(net, path, check_size=32)

    assert info.parity_rel_error is not None and info.parity_rel_error < 1e-4
    assert info.format == "onnx" and info.path == "model.onnx" and info.opset == 18
    assert info.sha256 == file_digest(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 37, 53), (3, 1, 20, 64), (1, 1, 4, 4)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        out = session.run(["output"], {"input": x})[0]
        assert out.shape == shape
        assert relative_error(out, _torch(net, x)) < 1e-5
    assert not list(tmp_path.glob("*.tmp"))


def test_trained_run_onnx_matches_denoise(trained_run: dict[str, Path]) -> None:
    """The model.onnx written after training reproduces model.pt in normalised units."""
    m = load_run(trained_run["run"])
    session = ort.InferenceSession(str(trained_run["run"] / "model.onnx"), providers=["CPUExecutionProvider"])
    x = m.normalization.normalize(np.random.default_rng(2).integers(90, 300, (1, 1, 45, 51)))

    out = session.run(None, {"input": x})[0]

    assert relative_error(out, _torch(m.net, x)) < 1e-5
    card = read_card(trained_run["run"])
    assert card.artifacts["onnx"].sha256 == file_digest(trained_run["run"] / "model.onnx")


def test_torchscript_parity(tmp_path: Path, net: UNet) -> None:
    """The TorchScript module matches the eager model on an odd-sized frame."""
    path = tmp_path / "model.ts"

    info = export_torchscript(net, path, check_size=32)

    assert info.parity_rel_error < 1e-4 and info.format == "torchscript"
    scripted = torch.jit.load(str(path))
    x = np.random.default_rng(3).standard_normal((2, 1, 29, 41)).astype(np.float32)
    with torch.no_grad():
        out = scripted(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, _torch(net, x), rtol=1e-5, atol=1e-6)


def test_onnx_refused_beyond_error_limit_leaves_no_file(tmp_path: Path, net: UNet) -> None:
    """An impossible error limit refuses the ONNX export with ExportError and removes the file."""
    path = tmp_path / "model.onnx"

    with pytest.raises(ExportError, match=r"ONNX export refused: relative error .* exceeds 1e-30"):
        export_onnx(net, path, check_size=32, max_rel_error=1e-30)

    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_refused_onnx_export_keeps_previous_model(run_copy: Path) -> None:
    """A refused re-export leaves the run's existing model.onnx (recorded in model.json) untouched."""
    onnx_path = run_copy / "model.onnx"
    before = file_digest(onnx_path)
    m = load_run(run_copy)

    with pytest.raises(ExportError):
        export_onnx(m.net, onnx_path, check_size=32, max_rel_error=1e-30)

    assert onnx_path.exists() and file_digest(onnx_path) == before


def test_failed_onnx_export_is_export_error(tmp_path: Path, net: UNet) -> None:
    """An export that cannot be written raises ExportError (not the exporter's own exception)."""
    with pytest.raises(ExportError, match="ONNX export failed"):
        export_onnx(net, tmp_path / "no_such_dir" / "model.onnx", check_size=32)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", [18, 17, 10_000])
def test_onnx_file_has_the_recorded_opset(tmp_path: Path, net: UNet, opset: int) -> None:
    """The opset in the written file equals the one asked for and recorded, or the export is refused."""
    path = tmp_path / "model.onnx"
    try:
        info = export_onnx(net, path, opset=opset, check_size=32)
    except ExportError:
        assert not path.exists()
        return

    written = {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""]
    assert written == info.opset == opset


def test_relative_error() -> None:
    """relative_error is ‖out − ref‖ / ‖ref‖ and 0 for identical arrays."""
    ref = np.array([3.0, 4.0], np.float32)

    assert relative_error(ref, ref) == 0.0
    assert relative_error(np.array([3.0, 4.5], np.float32), ref) == pytest.approx(0.1)


def test_card_is_self_contained(trained_run: dict[str, Path]) -> None:
    """model.json holds what a streamer needs: architecture, normalisation, size multiple, tiling, artifacts."""
    card = json.loads((trained_run["run"] / "model.json").read_text())

    assert card["card_version"] == 1
    assert card["architecture"]["depth"] == 1 and card["architecture"]["base_filters"] == 8
    assert card["size_multiple"] == 2
    assert card["normalization"]["std"] > 0
    assert set(card["artifacts"]) == {"onnx", "torchscript"}
    assert card["tile"] == {"size": 2048, "overlap": 2 ** (1 + 3)}  # depth 1: margin of the U-Net's reach
    assert card["training"]["epochs"] == len(card["history"]) == 2
    assert card["training"]["data"]["source"] == "files"
    assert card["training"]["data"]["references_used_for"] == "validation metrics only"
