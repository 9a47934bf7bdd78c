"""Inference engines: parity with the TorchScript model, the choice of engine, the precision check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CAMERA

from streamer.core.card import ModelCard
from streamer.engines import ENGINES, Engine, available_engines, create_engine, psnr_between
from streamer.engines.onnxruntime import OnnxRuntimeEngine
from streamer.engines.openvino import import_openvino
from streamer.sources import SimulatedCameraConfig, simulate_stack


@pytest.fixture(scope="module")
def card(trained_run: dict[str, Path]) -> ModelCard:
    """The trained run's model card."""
    return ModelCard.load(trained_run["run"])


@pytest.fixture(scope="module")
def batch(card: ModelCard) -> np.ndarray:
    """A simulated camera frame normalised with the card's statistics, as a (1, 1, H, W) batch."""
    raw, _ = simulate_stack(SimulatedCameraConfig(**{**TINY_CAMERA, "seed": 11}), 1)
    return ((raw[:1, None].astype(np.float32) - card.mean) / card.std).astype(np.float32)


@pytest.fixture(scope="module")
def reference(card: ModelCard, batch: np.ndarray) -> np.ndarray:
    """The exported TorchScript model's float32 output, run directly with PyTorch."""
    module = torch.jit.load(str(card.run_dir / "model.ts"), map_location="cpu").eval()
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def need(name: str) -> None:
    if name not in available_engines():
        pytest.skip(f"{name} is not installed here")


def openvino_bf16_missing() -> str | None:
    """Why OpenVINO cannot run bf16 on this CPU, or None when it can."""
    try:
        ov = import_openvino()
    except ImportError as exc:
        return f"openvino is not installed ({exc})"
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "this CPU has no bf16 support in OpenVINO"
    return None


@pytest.mark.parametrize("name", ENGINES)
def test_fp32_parity_with_torchscript(name: str, card: ModelCard, batch: np.ndarray, reference: np.ndarray) -> None:
    """Each engine at fp32 reproduces the TorchScript float32 output to 1e-4 relative error."""
    need(name)
    engine = create_engine(name, card, precision="fp32", device="cpu", num_threads=1)

    out = engine.infer(batch)

    assert engine.name == name and engine.precision == "fp32"
    assert out.shape == batch.shape and out.dtype == np.float32
    assert relative_error(out, reference) < 1e-4
    assert not np.allclose(out, batch, atol=1e-3)  # the network does something


@pytest.mark.parametrize("name", ENGINES)
def test_auto_precision_matches_fp32(name: str, card: ModelCard, batch: np.ndarray, reference: np.ndarray) -> None:
    """Each engine at precision 'auto' stays within 50 dB of float32 and says which precision it chose."""
    need(name)
    engine = create_engine(name, card, precision="auto", device="cpu", num_threads=1)

    out = engine.infer(batch)

    assert psnr_between(out, reference) >= 50
    assert engine.precision in ("fp32", "bf16", "fp16")
    if engine.precision != "fp32":
        assert engine.precision in engine.precision_note and "dB" in engine.precision_note


def test_psnr_between() -> None:
    """psnr_between is infinite for identical arrays and falls as the error grows."""
    ref = np.linspace(0, 1, 100, dtype=np.float32)
    small, large = ref + 1e-4, ref + 1e-2

    assert psnr_between(ref, ref) == float("inf")
    assert psnr_between(small, ref) > psnr_between(large, ref) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' prefers PyTorch on CUDA when a GPU is present")
def test_auto_picks_openvino_on_cpu(card: ModelCard) -> None:
    """Without a GPU, 'auto' takes OpenVINO on the CPU (the TorchScript engine only when asked for)."""
    need("openvino")
    engine = create_engine("auto", card, num_threads=1)

    assert engine.name == "openvino" and engine.device == "cpu"


def test_precision_check_rejects_and_falls_back(card: ModelCard, batch: np.ndarray, reference: np.ndarray) -> None:
    """bf16 that cannot meet an impossible PSNR bar is rejected: fp32 runs, and precision_note says why."""
    reason = openvino_bf16_missing()
    if reason:
        pytest.skip(reason)
    engine = create_engine("openvino", card, precision="bf16", num_threads=1, min_psnr_db=500)

    out = engine.infer(batch)

    assert engine.precision == "fp32"
    assert "bf16 rejected" in engine.precision_note and "500 dB" in engine.precision_note
    assert "fp32" in engine.precision_note
    assert relative_error(out, reference) < 1e-4  # really the fp32 model
    assert engine.info()["precision"] == "fp32" and engine.info()["precision_note"] == engine.precision_note


def test_precision_check_keeps_reduced_precision_that_passes(card: ModelCard, batch: np.ndarray) -> None:
    """bf16 that meets the PSNR bar is kept, and precision_note gives the measured dB."""
    reason = openvino_bf16_missing()
    if reason:
        pytest.skip(reason)
    engine = create_engine("openvino", card, precision="bf16", num_threads=1, min_psnr_db=20)

    engine.infer(batch)

    assert engine.precision == "bf16"
    assert "bf16 checked against fp32" in engine.precision_note and "dB" in engine.precision_note


def test_unsupported_precision_falls_back_with_a_note(card: ModelCard, batch: np.ndarray,
                                                      reference: np.ndarray) -> None:
    """A precision the engine cannot run here (fp16 on ONNX Runtime's CPU) falls back to fp32 and says so."""
    need("onnxruntime")
    engine = create_engine("onnxruntime", card, precision="fp16", device="cpu", num_threads=1)

    out = engine.infer(batch)

    assert engine.precision == "fp32" and "fp16 not supported" in engine.precision_note
    assert relative_error(out, reference) < 1e-4


def test_unknown_engine_names_the_choices(card: ModelCard) -> None:
    """An engine name that does not exist is a ValueError listing the real ones."""
    with pytest.raises(ValueError, match="tensorflow") as info:
        create_engine("tensorflow", card)

    for name in ("auto", *ENGINES):
        assert name in str(info.value)


def test_missing_torchscript_export_gives_the_export_hint(run_copy: Path) -> None:
    """The torch engine on a model folder without model.ts raises FileNotFoundError saying how to export it."""
    need("torch")
    (run_copy / "model.ts").unlink()
    card = ModelCard.load(run_copy)

    with pytest.raises(FileNotFoundError, match=r"model\.ts") as info:
        create_engine("torch", card, num_threads=1)

    assert f"n2n export --model {run_copy} --format torchscript" in str(info.value)


class CountingEngine(OnnxRuntimeEngine):
    """The real ONNX Runtime engine, counting how often it compiles."""

    compiles = 0

    def _compile(self, shape: tuple[int, int, int, int], precision: str) -> object:
        self.compiles += 1
        return super()._compile(shape, precision)


def test_prepare_compiles_once_per_shape(card: ModelCard) -> None:
    """prepare compiles a shape once; repeats (and infer on that shape) reuse it; a new shape adds one."""
    need("onnxruntime")
    engine = CountingEngine(card.artifact("onnx"), precision="fp32", num_threads=1)

    engine.prepare((1, 1, 32, 32))
    engine.prepare((1, 1, 32, 32))
    engine.infer(np.zeros((1, 1, 32, 32), np.float32))
    assert engine.compiles == 1 and engine.info()["shapes"] == [[1, 1, 32, 32]]

    engine.infer(np.zeros((2, 1, 16, 24), np.float32))
    engine.prepare((1, 1, 32, 32))
    assert engine.compiles == 2 and engine.info()["shapes"] == [[1, 1, 32, 32], [2, 1, 16, 24]]


@pytest.mark.parametrize("name", ENGINES)
def test_engine_runs_several_shapes(name: str, card: ModelCard, batch: np.ndarray, reference: np.ndarray) -> None:
    """Switching between compiled shapes gives each shape its own correct result."""
    need(name)
    engine: Engine = create_engine(name, card, precision="fp32", device="cpu", num_threads=1)
    crop = np.ascontiguousarray(batch[:, :, :32, :48])

    first = engine.infer(batch)
    small = engine.infer(crop)
    again = engine.infer(batch)

    assert small.shape == crop.shape
    assert np.array_equal(first, again)
    assert len(engine.info()["shapes"]) == 2


def test_infer_rejects_non_batch_input(card: ModelCard) -> None:
    """infer wants (N, 1, H, W): a 2-D frame or a 3-channel batch is a ValueError naming the shape."""
    need("onnxruntime")
    engine = create_engine("onnxruntime", card, precision="fp32", device="cpu", num_threads=1)

    with pytest.raises(ValueError, match=r"\(64, 64\)"):
        engine.infer(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\)"):
        engine.infer(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize(("dtype", "output"), [("uint8", "same"), ("uint16", "same"), ("int16", "same"),
                                                ("float32", "same"), ("uint16", "float32")])
def test_openvino_frame_path_matches_the_python_path(card: ModelCard, dtype: str, output: str) -> None:
    """OpenVINO's frame path (normalisation and conversion back compiled into the graph) gives the Denoiser's
    Python path's frame: same dtype, and the same values up to float32 rounding (integers: at most one grey
    level on a handful of pixels, where x·(1/σ) and x/σ round to either side of .5)."""
    from streamer.denoiser import Denoiser

    rng = np.random.default_rng(4)
    lo, hi = (0, 250) if dtype == "uint8" else (50, 3000)
    frame = rng.integers(lo, hi, (64, 80)).astype(dtype)
    framed = Denoiser(card, create_engine("openvino", card, precision="fp32", num_threads=1), output_dtype=output)
    plain_engine = create_engine("openvino", card, precision="fp32", num_threads=1)
    plain_engine.frame_dtypes = ()  # the Python path: normalise, engine, convert back in numpy
    plain = Denoiser(card, plain_engine, output_dtype=output)

    a, b = framed(frame), plain(frame)

    assert a.dtype == b.dtype == (np.float32 if output == "float32" else np.dtype(dtype)) and a.shape == b.shape
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if a.dtype.kind in "iu":
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 3
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
    assert framed.engine._compiled[(1, 1, 64, 80)] is None  # the float-batch model was let go


def test_the_precision_note_is_logged_once_per_outcome(card: ModelCard, caplog: pytest.LogCaptureFixture) -> None:
    """Three frame shapes compiled to the same precision: the engine says its precision note once (the demo said it
    three times), and every shape still has its note."""
    import logging

    engine = create_engine("onnxruntime", card, precision="fp16", num_threads=1)
    with caplog.at_level(logging.DEBUG, logger="n2n.streamer"):
        for side in (32, 48, 64):
            engine.prepare((1, 1, side, side))
            assert engine.precision_note
    said = [r for r in caplog.records if r.levelno >= logging.INFO and r.getMessage().startswith("onnxruntime:")]
    assert len(said) == 1
    engine.close()
