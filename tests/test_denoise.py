"""``n2n denoise`` on real files with a real trained model: formats keep axes, dtype and metadata; the pixels
are the serving Denoiser's; one channel; float32; a stop and a rerun give the same pixels; Dask workers give
the same pixels as this process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import TINY_CAMERA

from streamer.core.card import ModelCard
from streamer.datasets import DatasetError, DatasetInfo, open_dataset
from streamer.datasets.ometiff import write_ome_tiff
from streamer.denoiser import Denoiser
from streamer.engines import create_engine
from streamer.offline import PROGRESS_NAME, DenoiseInterrupted, denoise
from streamer.offline.config import DenoiseConfig
from streamer.sources import SimulatedCameraConfig, simulate_stack

FP32 = {"precision": "fp32", "threads": 1}


def frames(n: int, size: int = 64, seed: int = 5) -> np.ndarray:
    cam = SimulatedCameraConfig(**{**TINY_CAMERA, "height": size, "width": size, "seed": seed})
    return simulate_stack(cam, n)[0]


@pytest.fixture
def hyperstack(tmp_path: Path) -> tuple[Path, DatasetInfo, np.ndarray]:
    """An OME-TIFF of 3 T × 2 C × 2 Z planes of 64², uint16, with physical sizes, channel names and
    per-plane metadata."""
    planes = frames(12)
    info = DatasetInfo(axes="TCZYX", shape=(3, 2, 2, 64, 64), dtype=np.uint16,
                       physical={"X": (0.65, "µm"), "Y": (0.65, "µm"), "Z": (2.0, "µm"), "T": (1.5, "s")},
                       channel_names=["GFP", "mCherry"],
                       plane_metadata=[{"ElapsedTime-ms": 100.0 * p, "Camera": "Sim", "index": p} for p in range(12)],
                       name="cells")
    path = tmp_path / "cells.ome.tif"
    write_ome_tiff(path, info, iter(planes), np.dtype(np.uint16))
    return path, info, planes


def opened(path: Path) -> tuple[DatasetInfo, np.ndarray]:
    """A dataset's description and all its planes (the files closed again)."""
    reader = open_dataset(path)
    try:
        return reader.info, reader.read(0, reader.info.planes)
    finally:
        reader.close()


def served(run: Path, planes: np.ndarray, output_dtype: str = "same") -> list[np.ndarray]:
    """What the serving Denoiser (fp32, one thread) makes of each plane."""
    card = ModelCard.load(run)
    den = Denoiser(card, create_engine("auto", card, precision="fp32", num_threads=1), output_dtype=output_dtype)
    return [den(p) for p in planes]


@pytest.mark.parametrize("suffix", [".ome.tif", ".ome.zarr"])
def test_output_keeps_axes_dtype_metadata_and_holds_the_served_pixels(
        trained_run: dict[str, Path], hyperstack: tuple[Path, DatasetInfo, np.ndarray], tmp_path: Path,
        suffix: str) -> None:
    path, info, planes = hyperstack
    before = path.read_bytes()
    out = tmp_path / f"den{suffix}"

    summary = denoise(path, trained_run["run"], out, DenoiseConfig(**FP32))

    got, pixels = opened(out)
    assert (got.axes, got.shape, got.dtype) == (info.axes, info.shape, info.dtype)
    assert got.channel_names == ["GFP", "mCherry"]
    assert got.physical == {"X": (0.65, "µm"), "Y": (0.65, "µm"), "Z": (2.0, "µm"), "T": (1.5, "s")}
    assert got.plane_metadata == info.plane_metadata
    assert np.array_equal(pixels, np.stack(served(trained_run["run"], planes)))
    assert (summary["planes"], summary["planes_denoised"], summary["precision"]) == (12, 12, "fp32")
    assert path.read_bytes() == before, "the input must never change"
    assert not list(tmp_path.glob("*.partial.zarr")), "the temporary store is removed once the TIFF is written"


def test_one_channel_is_denoised_and_the_others_copied(
        trained_run: dict[str, Path], hyperstack: tuple[Path, DatasetInfo, np.ndarray], tmp_path: Path) -> None:
    path, info, planes = hyperstack
    out = tmp_path / "den.zarr"

    summary = denoise(path, trained_run["run"], out, DenoiseConfig(channel="mCherry", **FP32))

    got = opened(out)[1]
    expected = served(trained_run["run"], planes)
    for p in range(12):
        if info.index(p)["C"] == 1:
            assert np.array_equal(got[p], expected[p]), p
        else:
            assert np.array_equal(got[p], planes[p]), p
    assert (summary["channel"], summary["planes_denoised"]) == (1, 6)


def test_float32_output_is_the_denoisers_float_output(
        trained_run: dict[str, Path], hyperstack: tuple[Path, DatasetInfo, np.ndarray], tmp_path: Path) -> None:
    path, _, planes = hyperstack

    denoise(path, trained_run["run"], tmp_path / "den.ome.tif", DenoiseConfig(dtype="float32", **FP32))

    got = tifffile.imread(tmp_path / "den.ome.tif")
    assert got.dtype == np.float32
    assert np.array_equal(got.reshape(12, 64, 64), np.stack(served(trained_run["run"], planes, "float32")))


def stop_after(tasks: int) -> object:
    seen: list[int] = []

    def progress(done: int, total: int, stage: str) -> None:
        seen.append(done)
        if len(seen) > tasks:  # the first call reports what was done before this run
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("suffix", [".ome.tif", ".zarr"])
def test_an_interrupted_run_continues_and_ends_identical(trained_run: dict[str, Path], tmp_path: Path,
                                                         suffix: str) -> None:
    raw = tmp_path / "raw.ome.tif"
    tifffile.imwrite(raw, frames(20), ome=True, metadata={"axes": "TYX"})
    whole, part = tmp_path / f"whole{suffix}", tmp_path / f"part{suffix}"
    cfg = DenoiseConfig(chunk_mib=3 * 64 * 64 * 2 / 2**20, **FP32)  # tasks of 3 planes
    denoise(raw, trained_run["run"], whole, cfg)

    with pytest.raises(DenoiseInterrupted, match="rerun the same command to continue"):
        denoise(raw, trained_run["run"], part, cfg, stop_after(2))
    store = part if suffix == ".zarr" else tmp_path / f"part{suffix}.partial.zarr"
    info, partial = opened(store)  # a valid OME-Zarr: done planes hold pixels, the rest zeros
    assert info.shape == (20, 64, 64)
    assert (store / PROGRESS_NAME).read_text().split("\n")[:2] == ["0 3", "3 6"]
    assert np.array_equal(partial[:6], opened(whole)[1][:6])
    assert not partial[9:].any()

    summary = denoise(raw, trained_run["run"], part, cfg)

    assert summary["planes_resumed"] >= 6 and summary["planes_run"] == 20 - summary["planes_resumed"]
    assert np.array_equal(opened(part)[1], opened(whole)[1])
    if suffix == ".zarr":
        assert not (part / PROGRESS_NAME).exists()
        assert zarr.open_group(part, mode="r").attrs["n2n-live"]["job"]["complete"] is True


def test_a_rerun_with_other_settings_is_refused(trained_run: dict[str, Path], tmp_path: Path) -> None:
    raw = tmp_path / "raw.ome.tif"
    tifffile.imwrite(raw, frames(8), ome=True, metadata={"axes": "TYX"})
    out = tmp_path / "den.zarr"
    cfg = DenoiseConfig(chunk_mib=64 * 64 * 2 / 2**20, **FP32)
    with pytest.raises(DenoiseInterrupted):
        denoise(raw, trained_run["run"], out, cfg, stop_after(1))

    with pytest.raises(DatasetError, match=r"unfinished denoise with other settings: output_dtype 'same' \(now "
                                           r"'float32'\); rerun it as it was"):
        denoise(raw, trained_run["run"], out, cfg.model_copy(update={"dtype": "float32"}))
    summary = denoise(raw, trained_run["run"], out, cfg.model_copy(update={"overwrite": True, "dtype": "float32"}))
    assert summary["planes_resumed"] == 0 and opened(out)[0].dtype == np.float32


def test_dask_workers_give_the_same_pixels_as_this_process(
        trained_run: dict[str, Path], hyperstack: tuple[Path, DatasetInfo, np.ndarray], tmp_path: Path) -> None:
    path, _, _ = hyperstack
    here = denoise(path, trained_run["run"], tmp_path / "here.zarr", DenoiseConfig(precision="fp32", threads=2))

    there = denoise(path, trained_run["run"], tmp_path / "there.ome.tif",
                    DenoiseConfig(precision="fp32", workers=2, chunk_mib=64 * 64 * 2 * 2 / 2**20))

    assert (here["scheduler"], there["scheduler"], there["workers"]) == ("this process", "LocalCluster", 2)
    assert np.array_equal(opened(tmp_path / "here.zarr")[1], opened(tmp_path / "there.ome.tif")[1])


def test_auto_precision_is_decided_once_and_recorded(trained_run: dict[str, Path], tmp_path: Path) -> None:
    raw = tmp_path / "raw.ome.tif"
    tifffile.imwrite(raw, frames(4), ome=True, metadata={"axes": "TYX"})

    summary = denoise(raw, trained_run["run"], tmp_path / "den.zarr", DenoiseConfig(threads=1))

    job = zarr.open_group(tmp_path / "den.zarr", mode="r").attrs["n2n-live"]["job"]
    assert job["requested_precision"] == "auto"
    assert job["precision"] == summary["precision"] != "auto"
    assert job["engine"] == summary["engine"] != "auto"


def test_planes_of_an_unfinished_task_are_redone_whatever_they_hold(trained_run: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """A kill in the middle of a task leaves some of its planes written, some not, some half: none is in the
    progress log, so the rerun writes them all again."""
    raw = tmp_path / "raw.ome.tif"
    tifffile.imwrite(raw, frames(12), ome=True, metadata={"axes": "TYX"})
    cfg = DenoiseConfig(chunk_mib=4 * 64 * 64 * 2 / 2**20, **FP32)  # tasks of 4 planes
    denoise(raw, trained_run["run"], tmp_path / "whole.zarr", cfg)
    with pytest.raises(DenoiseInterrupted):
        denoise(raw, trained_run["run"], tmp_path / "part.zarr", cfg, stop_after(1))
    store = zarr.open_array(tmp_path / "part.zarr/0", mode="r+")
    store[4:7] = np.random.default_rng(0).integers(0, 65535, (3, 64, 64), dtype=np.uint16)  # the next task's

    summary = denoise(raw, trained_run["run"], tmp_path / "part.zarr", cfg)

    assert summary["planes_resumed"] == 4
    assert np.array_equal(opened(tmp_path / "part.zarr")[1], opened(tmp_path / "whole.zarr")[1])


def test_a_resumed_run_uses_the_recorded_precision_not_a_new_decision(trained_run: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    raw = tmp_path / "raw.ome.tif"
    tifffile.imwrite(raw, frames(6), ome=True, metadata={"axes": "TYX"})
    cfg = DenoiseConfig(chunk_mib=2 * 64 * 64 * 2 / 2**20, threads=1)  # auto precision, tasks of 2 planes
    with pytest.raises(DenoiseInterrupted):
        denoise(raw, trained_run["run"], tmp_path / "den.zarr", cfg, stop_after(1))
    group = zarr.open_group(tmp_path / "den.zarr", mode="r+")
    ours = dict(group.attrs["n2n-live"])
    assert ours["job"]["precision"] != "auto" and ours["job"]["requested_precision"] == "auto"
    ours["job"] = {**ours["job"], "precision": "fp32"}  # as if auto had chosen fp32 on the first run
    group.attrs["n2n-live"] = ours

    summary = denoise(raw, trained_run["run"], tmp_path / "den.zarr", cfg)

    assert summary["precision"] == "fp32"
    rest = opened(tmp_path / "den.zarr")[1][2:]
    assert np.array_equal(rest, np.stack(served(trained_run["run"], frames(6)[2:])))  # served: fp32


def test_a_second_run_into_the_same_output_is_refused_while_one_runs(trained_run: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    from streamer.offline.store import exclusive

    raw = tmp_path / "raw.ome.tif"
    tifffile.imwrite(raw, frames(2), ome=True, metadata={"axes": "TYX"})
    out = tmp_path / "den.ome.tif"

    with exclusive(out), pytest.raises(DatasetError, match=rf"{out}: another n2n denoise is writing it \(pid "):
        denoise(raw, trained_run["run"], out, DenoiseConfig(**FP32))

    denoise(raw, trained_run["run"], out, DenoiseConfig(**FP32))  # once it has ended, the output is free
    assert out.exists() and not list(tmp_path.glob(".*n2n-lock"))


def test_a_channel_index_in_a_config_file_is_accepted(tmp_path: Path) -> None:
    from streamer.core.config import load_config

    path = tmp_path / "denoise.yaml"
    path.write_text("version: 1\nchannel: 1\n")

    assert load_config(DenoiseConfig, path).channel == 1


def test_an_existing_dask_cluster_gives_the_same_pixels(
        trained_run: dict[str, Path], hyperstack: tuple[Path, DatasetInfo, np.ndarray], tmp_path: Path) -> None:
    """--scheduler: a cluster started elsewhere (here: two worker processes of two threads each, so two tasks
    share one worker's engine by turns)."""
    from distributed import LocalCluster

    path, _, _ = hyperstack
    here = denoise(path, trained_run["run"], tmp_path / "here.zarr", DenoiseConfig(precision="fp32", threads=1))
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        there = denoise(path, trained_run["run"], tmp_path / "there.zarr",
                        DenoiseConfig(precision="fp32", threads=1, scheduler=cluster.scheduler_address,
                                      chunk_mib=64 * 64 * 2 / 2**20))

    assert (there["scheduler"], there["workers"], here["workers"]) == (cluster.scheduler_address, 2, 1)
    assert np.array_equal(opened(tmp_path / "here.zarr")[1], opened(tmp_path / "there.zarr")[1])
