"""NDTiff datasets (pycromanager's format) read as TCZYX planes: one written by pycromanager's own
Acquisition on the simulated Micro-Manager core, one written with ndstorage's writer, and bad inputs."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ndstorage import Dataset, NDTiffDataset

from streamer.datasets.base import DatasetError
from streamer.datasets.ndtiff import NdTiffReader, find_ndtiff, is_ndtiff

REPO_ROOT = Path(__file__).resolve().parents[1]
H, W = 6, 5


def write_ndtiff(root: Path, name: str, coords: list[dict[str, Any]], summary: dict[str, Any] | None = None,
                 metadata: list[dict[str, Any]] | None = None) -> Path:
    """A dataset written by ndstorage's writer (``root/name_1``): the image at coords[i] is ``plane_pixels(i)``."""
    ds = NDTiffDataset(dataset_path=str(root), name=name, writable=True)
    ds.initialize(summary or {})
    for i, c in enumerate(coords):
        ds.put_image(c, plane_pixels(i), {"Axes": c, "Index": i, **(metadata[i] if metadata else {})})
    writer = ds.current_writer
    ds.finish()
    writer.reader.close()  # ndstorage's writer opens a reader of its file and never closes it
    ds.close()
    return Path(ds.path)


def plane_pixels(i: int) -> np.ndarray:
    return (1000 * i + np.arange(H * W)).astype(np.uint16).reshape(H, W)


def open_with_ndstorage(folder: Path) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return Dataset(str(folder))


@pytest.fixture(scope="module")
def mm_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """pycromanager's Acquisition, 3 time points × 2 channels (named) × 2 z slices, in a fresh process."""
    out = tmp_path_factory.mktemp("mm")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "mm_ndtiff.py"), str(out), "3"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["root"] = out
    return result


def test_pycromanager_acquisition(mm_dataset: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The parent folder given to Acquisition(directory=...) opens the dataset it wrote; every plane is the
    image ndstorage reads at its coordinates, in T, C, Z order; sizes and metadata come through."""
    folder = Path(mm_dataset["folder"])
    assert is_ndtiff(mm_dataset["root"]) and find_ndtiff(mm_dataset["root"]) == folder
    reader = NdTiffReader(mm_dataset["root"])
    try:
        assert capsys.readouterr().out == ""  # ndstorage's progress lines are kept off stdout
        info = reader.info
        assert reader.path == folder and info.name == folder.name and reader.kind == "ndtiff"
        assert info.axes == "TCZYX" and info.shape == (3, 2, 2, mm_dataset["height"], mm_dataset["width"])
        assert info.dtype == np.uint16
        assert info.channel_names == sorted(mm_dataset["channels"])  # ndstorage's order: sorted names
        assert info.physical["X"] == info.physical["Y"] == (mm_dataset["pixel_size_um"], "µm")
        assert info.physical["Z"] == (mm_dataset["z_step_um"], "µm")  # from ZPosition_um_Intended
        assert info.physical["T"][1] == "s" and 0.015 < info.physical["T"][0] < 1  # from ElapsedTime-ms
        planes = reader.read(0, info.planes)
        assert planes.shape == (12, *info.plane_shape) and planes.dtype == np.uint16
        assert info.plane_metadata is not None and len(info.plane_metadata) == 12
        json.dumps(info.plane_metadata)
        ds = open_with_ndstorage(folder)
        try:
            for p in range(info.planes):
                at = info.index(p)
                coords = {"time": at["T"], "channel": info.channel_names[at["C"]], "z": at["Z"]}
                assert np.array_equal(planes[p], ds.read_image(**coords)), coords
                assert info.plane_metadata[p]["Axes"] == coords
                assert info.plane_metadata[p]["ZPosition_um_Intended"] == at["Z"] * mm_dataset["z_step_um"]
        finally:
            ds.close()
        assert len({p.tobytes() for p in planes}) == 12  # the camera's frames all differ (shot noise)
    finally:
        reader.close()


def test_written_with_ndstorage(tmp_path: Path) -> None:
    """time × channel × z with channel names written in a scrambled order: planes come in T, C, Z order
    with channels by name (sorted), a single-valued 'position' axis is ignored, ranges read as slices."""
    channels = ["GFP", "DAPI", "mCherry"]
    grid = list(itertools.product(range(2), channels, range(4)))
    order = np.random.default_rng(0).permutation(len(grid))
    coords = [{"time": grid[k][0], "channel": grid[k][1], "z": grid[k][2], "position": 0} for k in order]
    summary = {"PixelSize_um": 0.108, "z-step_um": 0.25, "Interval_ms": 500.0, "PixelType": "GRAY16"}
    folder = write_ndtiff(tmp_path, "multi", coords, summary)
    expected_names = sorted(channels)
    written = {(c["time"], c["channel"], c["z"]): i for i, c in enumerate(coords)}
    expected = np.stack([plane_pixels(written[(t, ch, z)]) for t in range(2) for ch in expected_names
                         for z in range(4)])
    for given in (folder, folder / "NDTiff.index", tmp_path):
        reader = NdTiffReader(given)
        try:
            info = reader.info
            assert reader.path == folder and info.name == "multi_1"
            assert info.axes == "TCZYX" and info.shape == (2, 3, 4, H, W) and info.dtype == np.uint16
            assert info.channel_names == expected_names
            assert info.physical == {"X": (0.108, "µm"), "Y": (0.108, "µm"), "Z": (0.25, "µm"), "T": (0.5, "s")}
            assert np.array_equal(reader.read(0, info.planes), expected)
            assert np.array_equal(reader.read(5, 17), expected[5:17])
            assert reader.read(23, 24).shape == (1, H, W) and reader.read(7, 7).shape == (0, H, W)
            assert info.plane_metadata is not None
            assert [m["Index"] for m in info.plane_metadata] == [written[(t, ch, z)] for t in range(2)
                                                                for ch in expected_names for z in range(4)]
        finally:
            reader.close()


def test_channel_order_from_chnames_and_time_only(tmp_path: Path) -> None:
    """Micro-Manager's ChNames (the acquisition's channel order) wins over sorting; a time-lapse of one
    axis reads as TYX; ZPosition_um steps give Z (no z-step_um)."""
    coords = [{"channel": ch, "z": z} for ch in ("Cy5", "BF") for z in range(3)]
    zyx = write_ndtiff(tmp_path, "cz", coords, {"ChNames": ["Cy5", "BF"]})
    tyx = write_ndtiff(tmp_path, "t", [{"time": t} for t in range(3)],
                       metadata=[{"ElapsedTime-ms": 100.0 * t, "ZPosition_um": -2.0} for t in range(3)])
    with contextlib.closing(NdTiffReader(zyx)) as reader:
        assert reader.info.axes == "CZYX" and reader.info.channel_names == ["Cy5", "BF"]
        assert np.array_equal(reader.read(0, 6), np.stack([plane_pixels(i) for i in range(6)]))
    with contextlib.closing(NdTiffReader(tyx)) as reader:
        assert reader.info.axes == "TYX" and reader.info.physical["T"] == (0.1, "s")
        assert reader.info.channel_names is None and "Z" not in reader.info.physical


def test_z_positions_give_the_step(tmp_path: Path) -> None:
    """Per-image ZPosition_um (a stack taken downwards) gives the Z step; per-image PixelSizeUm the pixel size."""
    folder = write_ndtiff(tmp_path, "z", [{"z": z} for z in range(3)],
                          metadata=[{"ZPosition_um": 10.0 - 0.5 * z, "PixelSizeUm": 0.2} for z in range(3)])
    with contextlib.closing(NdTiffReader(folder)) as reader:
        assert reader.info.physical == {"X": (0.2, "µm"), "Y": (0.2, "µm"), "Z": (0.5, "µm")}


def one_line_error(path: Path) -> str:
    with pytest.raises(DatasetError) as err:
        NdTiffReader(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not an NDTiff")
    assert not is_ndtiff(tmp_path / "plain") and not is_ndtiff(tmp_path / "plain" / "notes.txt")
    assert "NDTiff.index" in one_line_error(tmp_path / "plain")
    assert "NDTiff.index" in one_line_error(tmp_path / "plain" / "notes.txt")
    assert "no such file" in one_line_error(tmp_path / "absent")

    positions = write_ndtiff(tmp_path / "pos", "p", [{"time": t, "position": p} for t in range(2) for p in range(2)])
    assert is_ndtiff(positions)
    assert "expected axes among time, channel, z; got 'position' with 2 values" in one_line_error(positions)

    holed = write_ndtiff(tmp_path / "holed", "h", [{"time": t, "z": z} for t in range(3) for z in range(2)][:-1])
    assert "1 of 6 images missing" in one_line_error(holed) and "time=2, z=1" in one_line_error(holed)

    write_ndtiff(tmp_path / "holed", "h", [{"time": 0}])  # a second dataset beside the first: which one?
    assert "holds 2 NDTiff datasets (h_1, h_2)" in one_line_error(tmp_path / "holed")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "NDTiff.index").write_bytes(b"\x01\x02")
    assert "not a readable NDTiff dataset" in one_line_error(broken)
