"""The dataset readers on real files: planes in T, C, Z order whatever order the file stores them in,
other writers' metadata (ImageJ, OME-Zarr 0.4 on Zarr v2, big-endian), names and sizes kept or not invented."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ndstorage import NDTiffDataset
from test_denoise import opened

from streamer.datasets import DatasetError, DatasetInfo, open_dataset
from streamer.datasets.ometiff import write_ome_tiff
from streamer.datasets.omezarr import OmeZarrWriter


def coded(t: int, c: int, z: int) -> np.ndarray:
    """A 16×16 plane whose every pixel says where it belongs: 100·t + 10·c + z."""
    return np.full((16, 16), 100 * t + 10 * c + z, np.uint16)


@pytest.mark.parametrize(("writer", "axes"), [("imagej", "TZCYX"), ("ome", "TZCYX"), ("ome", "ZTCYX")])
def test_planes_come_in_t_c_z_order_whatever_the_files_page_order(tmp_path: Path, writer: str, axes: str) -> None:
    sizes = {"T": 2, "C": 3, "Z": 2}
    lead = axes[:-2]
    stack = np.empty((*(sizes[a] for a in lead), 16, 16), np.uint16)
    for index in np.ndindex(*stack.shape[:-2]):
        where = dict(zip(lead, index))
        stack[index] = coded(where["T"], where["C"], where["Z"])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, imagej=writer == "imagej", ome=writer == "ome", metadata={"axes": axes})

    info, planes = opened(path)

    assert (info.axes, info.shape) == ("TCZYX", (2, 3, 2, 16, 16))
    expected = [100 * t + 10 * c + z for t in range(2) for c in range(3) for z in range(2)]
    assert [int(p[0, 0]) for p in planes] == expected
    reader = open_dataset(path)
    try:
        assert [int(p[0, 0]) for p in reader.read(5, 9)] == expected[5:9]  # a range, not only the whole
    finally:
        reader.close()


def test_ome_zarr_0_4_on_zarr_v2_big_endian_is_read_in_native_order(tmp_path: Path) -> None:
    """bioformats2raw writes big-endian (">u2") Zarr v2 arrays with NGFF 0.4 attributes."""
    planes = np.stack([coded(t, 0, 0) + 1000 for t in range(3)]).astype(">u2")
    group = zarr.open_group(tmp_path / "b2r.zarr", mode="w", zarr_format=2)
    group.create_array("0", shape=planes.shape, chunks=(1, 16, 16), dtype=">u2")[...] = planes
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.2, 0.2]}]}]}]

    info, got = opened(tmp_path / "b2r.zarr")

    assert info.dtype == np.dtype("uint16") and info.dtype.isnative
    assert got.dtype == np.dtype("uint16") and np.array_equal(got, planes.astype(np.uint16))
    assert info.physical["X"] == (0.2, "µm")


def test_numeric_and_single_channel_names_survive_a_round_trip(tmp_path: Path) -> None:
    two = DatasetInfo(axes="CYX", shape=(2, 16, 16), dtype=np.uint16, channel_names=["488", "561"])
    write_ome_tiff(tmp_path / "two.ome.tif", two, iter([coded(0, 0, 0), coded(0, 1, 0)]), np.dtype(np.uint16))
    one = DatasetInfo(axes="TYX", shape=(2, 16, 16), dtype=np.uint16, channel_names=["GFP"])
    write_ome_tiff(tmp_path / "one.ome.tif", one, iter([coded(0, 0, 0), coded(1, 0, 0)]), np.dtype(np.uint16))

    assert opened(tmp_path / "two.ome.tif")[0].channel_names == ["488", "561"]
    assert opened(tmp_path / "one.ome.tif")[0].channel_names == ["GFP"]


def test_an_uncalibrated_imagej_stack_gets_no_invented_pixel_size(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", np.stack([coded(t, 0, 0) for t in range(2)]), imagej=True,
                     metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "cal.tif", np.stack([coded(t, 0, 0) for t in range(2)]), imagej=True,
                     resolution=(1 / 0.65, 1 / 0.65), metadata={"axes": "TYX", "unit": "um"})

    assert "X" not in opened(tmp_path / "plain.tif")[0].physical
    x, unit = opened(tmp_path / "cal.tif")[0].physical["X"]
    assert unit == "µm" and x == pytest.approx(0.65)


def test_a_tiff_with_several_series_is_refused(tmp_path: Path) -> None:
    with tifffile.TiffWriter(tmp_path / "positions.ome.tif", ome=True) as tif:
        for _ in range(2):
            tif.write(np.stack([coded(0, 0, 0)] * 2), metadata={"axes": "TYX"})

    with pytest.raises(DatasetError, match=r"holds 2 image series \(stage positions\?\); expected one"):
        open_dataset(tmp_path / "positions.ome.tif")


def _write(kind: str, root: Path, stack: np.ndarray) -> Path:
    if kind == "ome-tiff":
        tifffile.imwrite(root / "stack.ome.tif", stack, ome=True, metadata={"axes": "TYX"})
        return root / "stack.ome.tif"
    if kind == "ome-zarr":
        info = DatasetInfo(axes="TYX", shape=stack.shape, dtype=stack.dtype)
        OmeZarrWriter.create(root / "stack.zarr", info, stack.dtype).write(0, stack)
        return root / "stack.zarr"
    ds = NDTiffDataset(dataset_path=str(root), name="stack", writable=True)
    ds.initialize({})
    for t, plane in enumerate(stack):
        ds.put_image({"time": t}, plane, {"Axes": {"time": t}})
    writer = ds.current_writer
    ds.finish()
    writer.reader.close()
    ds.close()
    return Path(ds.path)


@pytest.mark.parametrize("kind", ["ome-tiff", "ndtiff", "ome-zarr"])
def test_threads_sharing_one_reader_each_get_their_own_planes(tmp_path: Path, kind: str) -> None:
    """The tasks of a Dask worker with several threads share one reader: reads at the same time must not mix
    (one file handle's seek and read interleaving with another thread's gave a plane from elsewhere)."""
    stack = np.random.default_rng(0).integers(0, 60000, (40, 64, 64), dtype=np.uint16)
    reader = open_dataset(_write(kind, tmp_path, stack))
    wrong: list[tuple[int, int]] = []

    def read_many(offset: int) -> None:
        for i in range(400):
            p = (7 * i + offset) % len(stack)
            got = reader.read(p, p + 2)
            wrong.extend((p + j, offset) for j in range(len(got)) if not np.array_equal(got[j], stack[p + j]))

    try:
        threads = [threading.Thread(target=read_many, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        reader.close()
    assert wrong == []
