"""The frame pipeline around an engine: the card's normalisation, seam-free tiling, the output dtype."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CAMERA

from streamer.core.card import ModelCard
from streamer.core.tiling import TilePlan, plan_axis
from streamer.denoiser import Denoiser, Timings
from streamer.engines import Engine, create_engine
from streamer.sources import SimulatedCameraConfig, simulate_stack


@pytest.fixture(scope="module")
def card(trained_run: dict[str, Path]) -> ModelCard:
    """The trained run's model card."""
    return ModelCard.load(trained_run["run"])


@pytest.fixture(scope="module")
def engine(card: ModelCard) -> Engine:
    """One fp32 engine shared by the module's denoisers (it compiles each shape once)."""
    return create_engine("auto", card, precision="fp32", device="cpu", num_threads=1)


def camera_frame(height: int, width: int, seed: int = 5) -> np.ndarray:
    """A uint16 frame from the simulated camera."""
    cam = SimulatedCameraConfig(**{**TINY_CAMERA, "height": height, "width": width, "seed": seed})
    return simulate_stack(cam, 1)[0][0]


# --- plan_axis ---------------------------------------------------------------------------------------
GRID = [(length, tile, margin, multiple)
        for multiple in (1, 2, 4, 8)
        for margin in (0, 3, 8, 16)
        for tile in (2 * margin + multiple, 2 * margin + 3 * multiple, 48, 64, 96)
        for length in (tile, tile + multiple, 2 * tile - multiple, 3 * tile + 5 * multiple, 1000 // multiple * multiple)
        if tile % multiple == 0 and tile > 2 * margin and length % multiple == 0]


def test_plan_axis_properties() -> None:
    """Over a grid of sizes: kept ranges partition 0:length, origins sit on the multiple, tiles stay
    inside the axis, and every kept pixel is at least `margin` from any inner tile border."""
    assert len(GRID) > 200
    for length, tile, margin, multiple in GRID:
        where = f"length={length} tile={tile} margin={margin} multiple={multiple}"
        plan = plan_axis(length, tile, margin, multiple)
        assert plan[0][1] == 0 and plan[-1][2] == length, where
        for (_, _, end), (_, start, _) in pairwise(plan):
            assert end == start, where  # contiguous, no overlap, no gap
        origins = [o for o, _, _ in plan]
        assert origins == sorted(set(origins)), where
        for origin, keep_from, keep_to in plan:
            size = min(tile, length)
            assert origin % multiple == 0 and 0 <= origin and origin + size <= length, where
            assert origin <= keep_from < keep_to <= origin + size, where
            if origin > 0:  # an inner border on the left
                assert keep_from - origin >= margin, where
            if origin + size < length:  # an inner border on the right
                assert origin + size - keep_to >= margin, where


def test_plan_axis_single_tile_when_it_fits() -> None:
    """An axis no longer than the tile is one tile keeping everything."""
    assert plan_axis(64, 64, 16, 8) == [(0, 0, 64)]
    assert plan_axis(40, 64, 16, 8) == [(0, 0, 40)]


def test_plan_axis_refuses_a_tile_too_small_for_its_margin() -> None:
    """A tile that leaves no room beyond twice the margin is a ValueError naming both."""
    with pytest.raises(ValueError, match="tile size 32 must exceed twice the overlap 16"):
        plan_axis(100, 32, 16, 2)


def test_tile_plan_pads_to_the_multiple() -> None:
    """A tiled plan pads the frame up to the size multiple and covers the padded frame."""
    plan = TilePlan.make((101, 131), tile_size=48, margin=16, multiple=4)

    assert plan.tiled and plan.padded == (104, 132) and plan.tile == (48, 48)
    assert plan.rows[-1][2] == 104 and plan.cols[-1][2] == 132
    assert plan.batch_shape == (len(plan.rows) * len(plan.cols), 1, 48, 48)
    assert not TilePlan.make((40, 48), tile_size=48, margin=16, multiple=4).tiled


# --- tiling -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(100, 130), (99, 131)])
def test_tiled_output_equals_whole_frame(card: ModelCard, engine: Engine, shape: tuple[int, int]) -> None:
    """A frame cut into 48-px tiles (margin = the card's overlap) is denoised exactly as the whole frame: no seams."""
    frame = camera_frame(*shape)
    tiled = Denoiser(card, engine, tile_size=48, output_dtype="float32")
    whole = Denoiser(card, engine, output_dtype="float32")

    a, b = tiled(frame), whole(frame)

    assert tiled.plan(shape).tiled and not whole.plan(shape).tiled
    assert a.shape == b.shape == shape
    err = np.abs(a - b).max() / card.std  # in the network's (normalised) units
    assert err <= 1e-4 * max(1.0, float(np.abs(b - card.mean).max() / card.std))
    assert any(s[2:] == [48, 48] for s in engine.info()["shapes"])  # the engine really ran 48-px tiles


def _random_run(folder: Path, **arch: object) -> ModelCard:
    """A model folder with a random-weight network of the family (a TorchScript export, quick to write, and a
    card), no training: tiling does not depend on the engine."""
    import torch

    from trainer.export import export_torchscript
    from trainer.unet import UNet

    torch.manual_seed(0)
    net = UNet(**arch).eval()  # type: ignore[arg-type]
    folder.mkdir()
    ts = export_torchscript(net, folder / "model.ts", check_size=32)
    ModelCard.model_validate({
        "name": folder.name, "architecture": {"name": "unet2d", **net.architecture},
        "size_multiple": net.size_multiple, "normalization": {"mean": 100.0, "std": 20.0},
        "tile": {"size": 2048, "overlap": net.reach}, "artifacts": {"torchscript": ts.model_dump()}}).save(folder)
    return ModelCard.load(folder)


@pytest.mark.parametrize("arch", [{"depth": 2, "base_filters": 8},
                                  {"depth": 3, "filters": [4, 8, 8, 16]},
                                  {"depth": 2, "base_filters": 8, "stem": "unshuffle"}],
                         ids=["depth 2", "depth 3, sub-pixel decoder", "unshuffle stem"])
def test_tiling_has_no_seams_for_deeper_networks(tmp_path: Path, arch: dict[str, object]) -> None:
    """The card's overlap (the network's reach) is enough at every depth, with the stem counted as a level:
    tiles stitched from a 2×2 (or larger) grid equal the whole frame."""
    card = _random_run(tmp_path / "run", **arch)
    eng = create_engine("torch", card, precision="fp32", device="cpu", num_threads=1)
    tile = 2 * card.tile_overlap + 4 * card.size_multiple
    frame = camera_frame(2 * tile - 3 * card.size_multiple + 5, 2 * tile + 7)
    tiled = Denoiser(card, eng, tile_size=tile, output_dtype="float32")
    whole = Denoiser(card, eng, output_dtype="float32")

    a, b = tiled(frame), whole(frame)

    plan = tiled.plan(frame.shape)  # type: ignore[arg-type]
    assert len(plan.rows) >= 2 and len(plan.cols) >= 2
    assert np.abs(a - b).max() / card.std <= 1e-4 * max(1.0, float(np.abs(b - card.mean).max() / card.std))


def test_tiles_without_overlap_show_seams(card: ModelCard, engine: Engine) -> None:
    """With no overlap the tiled result differs from the whole frame (the comparison above can see seams)."""
    frame = camera_frame(100, 130)
    tiled = Denoiser(card, engine, tile_size=48, tile_overlap=0, output_dtype="float32")
    whole = Denoiser(card, engine, output_dtype="float32")

    assert np.abs(tiled(frame) - whole(frame)).max() / card.std > 1e-3


# --- output dtype -----------------------------------------------------------------------------------
def edge_frame(dtype: type, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    """Left half at the type's minimum, right half at its maximum, one mid-range column between."""
    info = np.iinfo(dtype)
    frame: np.ndarray = np.full(shape, info.min, dtype)
    frame[:, shape[1] // 2 :] = info.max
    frame[:, shape[1] // 2 - 2] = (int(info.min) + int(info.max)) // 2
    return frame


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_same_dtype_is_clipped_and_rounded(card: ModelCard, engine: Engine, dtype: type) -> None:
    """output 'same' gives the input dtype: the float32 result rounded and clipped to the type's range."""
    frame = edge_frame(dtype)
    exact = Denoiser(card, engine, output_dtype="float32")(frame)
    same = Denoiser(card, engine, output_dtype="same")(frame)
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max

    assert same.dtype == dtype and same.shape == frame.shape
    assert ((exact < lo) | (exact > hi)).any()  # clipping really happens on this frame
    assert np.array_equal(same, np.clip(np.rint(exact.astype(np.float64)), lo, hi).astype(dtype))


@pytest.mark.parametrize("dtype", [np.uint32, np.int32])
def test_saturated_wide_integers_do_not_wrap(card: ModelCard, engine: Engine, dtype: type) -> None:
    """32-bit integer frames at the type's limits stay at the limits (float32 rounding must not wrap them)."""
    frame = edge_frame(dtype)
    exact = Denoiser(card, engine, output_dtype="float32")(frame)

    same = Denoiser(card, engine, output_dtype="same")(frame)

    info = np.iinfo(dtype)
    assert same.dtype == dtype
    expected = np.clip(exact.astype(np.float64), info.min, info.max)
    assert np.abs(same.astype(np.float64) - expected).max() <= 512  # float32 spacing near 2**32
    assert same[:, -4:].min() > info.max // 2 and same[:, :4].max() < info.min // 2 + info.max // 4


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_float32_output_is_unrounded(card: ModelCard, engine: Engine, dtype: type) -> None:
    """output 'float32' returns unrounded, unclipped intensities whatever the input dtype."""
    frame = np.clip(camera_frame(64, 64), 0, np.iinfo(dtype).max).astype(dtype)

    out = Denoiser(card, engine, output_dtype="float32")(frame)

    assert out.dtype == np.float32
    assert not np.array_equal(out, np.rint(out))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_input_keeps_its_dtype(card: ModelCard, engine: Engine, dtype: type) -> None:
    """A float frame with output 'same' comes back in its own float type, unrounded."""
    frame: np.ndarray = camera_frame(64, 64).astype(dtype)

    out = Denoiser(card, engine, output_dtype="same")(frame)

    assert out.dtype == dtype and not np.array_equal(out, np.rint(out))


def test_bad_output_dtype_is_refused(card: ModelCard, engine: Engine) -> None:
    """An output_dtype other than 'same' or 'float32' is a ValueError naming both."""
    with pytest.raises(ValueError, match="'same' or 'float32', got 'uint8'"):
        Denoiser(card, engine, output_dtype="uint8")


# --- normalisation --------------------------------------------------------------------------------
def test_preprocess_uses_card_statistics(card: ModelCard, engine: Engine) -> None:
    """preprocess is (x - mean) / std with the card's values, and postprocess inverts it."""
    denoiser = Denoiser(card, engine, output_dtype="float32")
    frame = camera_frame(64, 64)

    x = denoiser.preprocess(frame)

    assert x.shape == (1, 1, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], (frame.astype(np.float64) - card.mean) / card.std, rtol=1e-5, atol=1e-5)
    back = denoiser.postprocess(x[0, 0].copy(), np.dtype(np.float32))
    np.testing.assert_allclose(back, frame, rtol=1e-6, atol=1e-3)
    assert np.array_equal(Denoiser(card, engine).postprocess(x[0, 0].copy(), frame.dtype), frame)


def test_normalisation_follows_the_card_not_the_frame(run_copy: Path) -> None:
    """With other mean/std in model.json, a constant frame at that mean maps to mean + std · net(0)."""
    path = run_copy / "model.json"
    raw = json.loads(path.read_text())
    raw["normalization"].update(mean=1000.0, std=50.0)
    path.write_text(json.dumps(raw))
    card = ModelCard.load(run_copy)
    engine = create_engine("onnxruntime", card, precision="fp32", device="cpu", num_threads=1)
    denoiser = Denoiser(card, engine, output_dtype="float32")
    zero_response = engine.infer(np.zeros((1, 1, 48, 48), np.float32))[0, 0]

    out = denoiser(np.full((48, 48), 1000.0, np.float32))
    brighter = denoiser(np.full((48, 48), 1050.0, np.float32))

    np.testing.assert_allclose(out, 1000.0 + 50.0 * zero_response, rtol=0, atol=1e-3)
    assert np.abs(brighter - out).mean() > 10  # the frame's brightness is kept, not normalised away


# --- input checks and timings ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 64), (64, 1), (1, 1)])
def test_frames_below_the_size_multiple_are_refused(card: ModelCard, engine: Engine, shape: tuple[int, int]) -> None:
    """A frame with a side below the model's size multiple is a ValueError naming the minimum."""
    denoiser = Denoiser(card, engine)

    with pytest.raises(ValueError, match=f"expected height and width >= {card.size_multiple}"):
        denoiser(np.zeros(shape, np.uint16))


def test_non_2d_frames_are_refused(card: ModelCard, engine: Engine) -> None:
    """A 3-D array is a ValueError naming its shape."""
    with pytest.raises(ValueError, match=r"expected a 2-D frame .* \(2, 8, 8\)"):
        Denoiser(card, engine)(np.zeros((2, 8, 8), np.uint16))


def test_timings_are_ordered(card: ModelCard, engine: Engine) -> None:
    """The stage timestamps a call fills in run forwards."""
    t = Timings()

    Denoiser(card, engine)(camera_frame(64, 64), t)

    assert 0 < t.start <= t.preprocessed <= t.inferred <= t.postprocessed


def test_info_describes_the_pipeline(card: ModelCard, engine: Engine) -> None:
    """info() names the model, engine, tiling and output dtype."""
    info = Denoiser(card, engine, tile_size=48, output_dtype="float32").info()

    assert info["model"] == card.name and info["engine"] == engine.name
    assert info["tile_size"] == 48 and info["tile_overlap"] == card.tile_overlap and info["output_dtype"] == "float32"
