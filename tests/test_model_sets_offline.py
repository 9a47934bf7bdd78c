"""Issue 32, a model per channel, the offline side: ``n2n denoise --model DAPI=A --model GFP=B`` (or a models.yaml)
denoises each channel's planes with its own model, writes a channel without a model as it is (raw, recorded as not
denoised) and says so once; one model on a multi-channel file still serves every channel, said once; a channel
is found by name or index through one function (``streamer.core.streams.channel_index``) for ``n2n train`` and
``n2n denoise`` alike; ``n2n evaluate`` scores each channel of a multi-channel stack with its own model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import TINY_CAMERA, train_tiny
from test_cli_errors import assert_one_error_line, n2n
from test_denoise import FP32, opened, served, stop_after

from streamer.core.modelset import NO_MODEL_FLAG, ModelSet
from streamer.datasets import DatasetError, open_dataset
from streamer.offline import DenoiseInterrupted, denoise
from streamer.offline.config import DenoiseConfig
from streamer.offline.marks import read_marks
from streamer.sources import SimulatedCameraConfig, StackError, read_stack, simulate_stack

NAMES = ["DAPI", "GFP", "mCherry"]
CLI_FP32 = ("--precision", "fp32", "--threads", "1")


def camera(t: int, seed: int, exposure_ms: float = 10.0) -> np.ndarray:
    return simulate_stack(SimulatedCameraConfig(**{**TINY_CAMERA, "seed": seed, "exposure_ms": exposure_ms}), t)[0]


@pytest.fixture(scope="module")
def models(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny models trained on different data (another sample, four times the exposure): their outputs differ."""
    base = tmp_path_factory.mktemp("gfp")
    raw, truth = simulate_stack(SimulatedCameraConfig(**{**TINY_CAMERA, "seed": 11, "exposure_ms": 40.0}), 6)
    run, _ = train_tiny(base, raw, truth)
    return trained_run["run"], run


def tcyx(path: Path, channels: int, names: list[str] | None = NAMES, t: int = 3) -> np.ndarray:
    """A (T, C, 64, 64) uint16 OME-TIFF, one simulated sample per channel, named by OME channel names."""
    data = np.stack([camera(t, seed=40 + c, exposure_ms=10.0 * (c + 1)) for c in range(channels)], axis=1)
    meta: dict[str, object] = {"axes": "TCYX"}
    if names is not None:
        meta["Channel"] = {"Name": names[:channels]}
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    return data


def test_each_channel_goes_through_its_own_model_and_one_without_is_written_raw(
        models: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dapi, gfp = models
    source = tmp_path / "cells.ome.tif"
    data = tcyx(source, 3)
    out = tmp_path / "den.ome.tif"

    with caplog.at_level(logging.INFO, logger="n2n.streamer"):
        summary = denoise(source, [f"DAPI={dapi}", f"GFP={gfp}"], out, DenoiseConfig(**FP32))

    info, pixels = opened(out)
    got = pixels.reshape(data.shape)
    assert info.channel_names == NAMES
    assert np.array_equal(got[:, 0], np.stack(served(dapi, data[:, 0])))
    assert np.array_equal(got[:, 1], np.stack(served(gfp, data[:, 1])))
    assert not np.array_equal(got[:, 0], np.stack(served(gfp, data[:, 0])))  # the models differ: each is its own
    assert not np.array_equal(got[:, 1], np.stack(served(dapi, data[:, 1])))
    assert np.array_equal(got[:, 2], data[:, 2]), "a channel without a model is written as it is, bit for bit"
    assert summary["models"] == {"DAPI": str(dapi), "GFP": str(gfp), "mCherry": None}
    assert (summary["planes_denoised"], summary["planes_no_model"], summary["channels_no_model"]) == (6, 3, ["mCherry"])
    # the output records its denoised planes (never mCherry's) and why mCherry's are raw
    reader = open_dataset(out)
    try:
        marked = read_marks(reader).planes
        record = json.loads(reader.notes["n2n-live:denoised-planes"])  # type: ignore[attr-defined]
    finally:
        reader.close()
    assert marked == {p for p in range(9) if p % 3 != 2}
    assert record["no_model"] == {"flag": NO_MODEL_FLAG, "planes": [[2, 3], [5, 6], [8, 9]], "channels": ["mCherry"]}
    assert record["models"] == {"DAPI": str(dapi.resolve()), "GFP": str(gfp.resolve()), "mCherry": None}
    said = [r.getMessage() for r in caplog.records]
    assert sum("channel mCherry has no model in the set" in m for m in said) == 1
    assert sum(f"channel DAPI → {dapi}, channel GFP → {gfp}" in m for m in said) == 1


def test_a_models_yaml_and_the_cli_give_the_same_and_zarr_records_the_routes(
        models: tuple[Path, Path], tmp_path: Path) -> None:
    dapi, gfp = models
    source = tmp_path / "cells.ome.tif"
    data = tcyx(source, 2, names=None)  # unnamed channels go by index
    ModelSet({"0": str(dapi)}, default=str(gfp)).save(tmp_path / "models.yaml")
    out = tmp_path / "den.zarr"

    result = n2n("denoise", source, "--model", tmp_path / "models.yaml", "--out", out, *CLI_FP32)

    assert result.exit_code == 0, result.output
    got = opened(out)[1].reshape(data.shape)
    assert np.array_equal(got[:, 0], np.stack(served(dapi, data[:, 0])))
    assert np.array_equal(got[:, 1], np.stack(served(gfp, data[:, 1])))
    job = dict(zarr.open_group(out, mode="r").attrs)["n2n-live"]["job"]
    assert [m["model"] for m in job["models"]] == [str(dapi.resolve()), str(gfp.resolve())]
    assert "0 → " in result.output and "1 → " in result.output  # the summary's models row

    again = n2n("denoise", source, "--model", f"0={dapi}", "--model", f"1={gfp}", "--out", tmp_path / "b.ome.tif",
                *CLI_FP32)
    assert again.exit_code == 0, again.output
    assert np.array_equal(opened(tmp_path / "b.ome.tif")[1].reshape(data.shape), got)


def test_an_interrupted_set_run_resumes_identical_and_its_partial_store_marks_no_raw_channel(
        models: tuple[Path, Path], tmp_path: Path) -> None:
    dapi, gfp = models
    source = tmp_path / "cells.ome.tif"
    tcyx(source, 3)
    cfg = DenoiseConfig(chunk_mib=2 * 64 * 64 * 2 / 2**20, **FP32)  # tasks of 2 planes
    spec = [f"DAPI={dapi}", f"GFP={gfp}"]
    denoise(source, spec, tmp_path / "whole.zarr", cfg)
    with pytest.raises(DenoiseInterrupted):
        denoise(source, spec, tmp_path / "part.zarr", cfg, stop_after(1))
    reader = open_dataset(tmp_path / "part.zarr")  # an unfinished store: its job record says which channels
    try:
        assert read_marks(reader).planes == {p for p in range(9) if p % 3 != 2}
    finally:
        reader.close()
    with pytest.raises(DatasetError, match="holds an unfinished denoise with other settings: models"):
        denoise(source, [f"DAPI={gfp}", f"GFP={dapi}"], tmp_path / "part.zarr", cfg)

    summary = denoise(source, spec, tmp_path / "part.zarr", cfg)

    assert summary["planes_resumed"] == 2
    assert np.array_equal(opened(tmp_path / "part.zarr")[1], opened(tmp_path / "whole.zarr")[1])


def test_dask_workers_route_each_channel_to_its_model_too(models: tuple[Path, Path], tmp_path: Path) -> None:
    dapi, gfp = models
    source = tmp_path / "cells.ome.tif"
    data = tcyx(source, 3, t=2)
    cfg = DenoiseConfig(precision="fp32", workers=2, chunk_mib=64 * 64 * 2 * 2 / 2**20)

    denoise(source, ModelSet({"GFP": str(gfp), "mCherry": str(dapi)}), tmp_path / "den.zarr", cfg)

    got = opened(tmp_path / "den.zarr")[1].reshape(data.shape)
    assert np.array_equal(got[:, 0], data[:, 0])
    assert np.array_equal(got[:, 1], np.stack(served(gfp, data[:, 1])))
    assert np.array_equal(got[:, 2], np.stack(served(dapi, data[:, 2])))


def test_one_model_on_two_channels_denoises_both_and_says_so(models: tuple[Path, Path], tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    dapi, _ = models
    source = tmp_path / "two.ome.tif"
    data = tcyx(source, 2)

    with caplog.at_level(logging.INFO, logger="n2n.streamer"):
        summary = denoise(source, dapi, tmp_path / "den.ome.tif", DenoiseConfig(**FP32))

    got = opened(tmp_path / "den.ome.tif")[1].reshape(data.shape)
    assert all(np.array_equal(got[:, c], np.stack(served(dapi, data[:, c]))) for c in range(2))
    assert summary["planes_denoised"] == 6 and summary["planes_no_model"] == 0
    said = [r.getMessage() for r in caplog.records if "serves each of its 2 channels" in r.getMessage()]
    assert len(said) == 1 and "(DAPI, GFP)" in said[0]


def test_channel_with_a_set_denoises_that_channel_with_its_model(models: tuple[Path, Path], tmp_path: Path) -> None:
    dapi, gfp = models
    source = tmp_path / "two.ome.tif"
    data = tcyx(source, 2)

    denoise(source, [f"DAPI={dapi}", f"GFP={gfp}"], tmp_path / "den.ome.tif", DenoiseConfig(channel="GFP", **FP32))

    got = opened(tmp_path / "den.ome.tif")[1].reshape(data.shape)
    assert np.array_equal(got[:, 0], data[:, 0])
    assert np.array_equal(got[:, 1], np.stack(served(gfp, data[:, 1])))


def test_a_set_that_serves_none_of_the_channels_or_names_one_twice_is_one_line(models: tuple[Path, Path],
                                                                              tmp_path: Path) -> None:
    dapi, gfp = models
    source = tmp_path / "two.ome.tif"
    tcyx(source, 2)
    out = tmp_path / "den.ome.tif"

    none = n2n("denoise", source, "--model", f"Cy5={dapi}", "--out", out, *CLI_FP32)
    assert_one_error_line(none.output, none.exit_code,
                          f"{source}: expected a model for at least one of its channels ('DAPI', 'GFP'), got a model "
                          f"set with none of them (Cy5 → {dapi}, any other channel → raw (no model))")
    twice = n2n("denoise", source, "--model", f"DAPI={dapi}", "--model", f"0={gfp}", "--out", out, *CLI_FP32)
    assert_one_error_line(twice.output, twice.exit_code,
                          f"{source}: expected one model per channel, got two for its channel 'DAPI': --model "
                          f"DAPI={dapi} and --model 0={gfp}")
    no_model = n2n("denoise", source, "--model", f"DAPI={dapi}", "--channel", "GFP", "--out", out, *CLI_FP32)
    assert_one_error_line(no_model.output, no_model.exit_code,
                          f"--channel GFP: {source}'s channel 'GFP' has no model in the set (DAPI → {dapi}, any other "
                          "channel → raw (no model)); expected --model GFP=FOLDER")
    assert not out.exists()


def test_one_function_finds_a_channel_by_name_or_index_for_train_and_denoise(trained_run: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    source = tmp_path / "two.ome.tif"
    data = tcyx(source, 2)
    assert np.array_equal(read_stack(source, channel="GFP"), data[:, 1])
    assert np.array_equal(read_stack(source, channel="0"), data[:, 0])
    expected = "--channel Cy5: expected a channel index 0..1 or a name ('DAPI', 'GFP'), got 'Cy5'"
    with pytest.raises(StackError) as raised:
        read_stack(source, channel="Cy5")
    assert str(raised.value) == f"{source}: {expected}"

    bad = n2n("denoise", source, "--model", trained_run["run"], "--channel", "Cy5", "--out", tmp_path / "d.ome.tif")
    assert_one_error_line(bad.output, bad.exit_code, f"{source}: {expected}")
    by_index = denoise(source, trained_run["run"], tmp_path / "d.ome.tif", DenoiseConfig(channel=1, **FP32))
    assert by_index["channel"] == 1 and by_index["planes_denoised"] == 3


def test_evaluate_scores_each_channel_with_its_own_model(models: tuple[Path, Path], tmp_path: Path) -> None:
    dapi, gfp = models
    source = tmp_path / "cells.ome.tif"
    data = tcyx(source, 3, t=4)
    reference = tmp_path / "ref.ome.tif"
    tifffile.imwrite(reference, data.mean(axis=0, dtype=np.float64).astype(np.float32), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": NAMES}})
    report_path = tmp_path / "eval.json"

    result = n2n("evaluate", "--model", f"DAPI={dapi}", "--model", f"GFP={gfp}", "--data", source, "--reference",
                 reference, "--precision", "fp32", "--json", report_path)

    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    channels = report["channels"]
    assert list(channels) == NAMES
    assert channels["DAPI"]["model"] == str(dapi) and channels["GFP"]["model"] == str(gfp)
    assert channels["mCherry"]["model"] is None and "psnr_denoised" not in channels["mCherry"]
    from trainer.config import EvaluateConfig
    from trainer.evaluate import evaluate

    cfg = EvaluateConfig(precision="fp32")
    for c, model in ((0, dapi), (1, gfp)):
        alone = evaluate(model, data[:, c], data[:, c].mean(axis=0, dtype=np.float64).astype(np.float32), cfg)[0]
        assert channels[NAMES[c]]["psnr_denoised"] == pytest.approx(alone["psnr_denoised"])
        assert channels[NAMES[c]]["psnr_raw"] == pytest.approx(alone["psnr_raw"])
    assert channels["mCherry"]["psnr_raw"] == pytest.approx(
        evaluate(dapi, data[:, 2], data[:, 2].mean(axis=0, dtype=np.float64).astype(np.float32), cfg)[0]["psnr_raw"])
    for name in NAMES:
        assert name in result.output  # a table row per channel
    assert "raw (no model)" in result.output

    one = n2n("evaluate", "--model", f"DAPI={dapi}", "--model", f"GFP={gfp}", "--data", source, "--reference",
              reference, "--precision", "fp32", "--channel", "GFP", "--json", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    single = json.loads((tmp_path / "one.json").read_text())
    assert single["channel"] == "GFP" and single["model"] == str(gfp)
    assert single["psnr_denoised"] == pytest.approx(channels["GFP"]["psnr_denoised"])
