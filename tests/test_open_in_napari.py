"""Issue 32: the files written, raw and denoised, open with the acquisition's axes and channel names: in napari (its
own readers: napari-ome-zarr for OME-Zarr, napari-tiff for OME-TIFF, under Xvfb in a process of its own), with
ome-zarr and with tifffile; nothing acquired is missing from the raw record. A real `n2n acquire` (2 channels × 2
positions × 2 z × 3 time points on the simulated microscope, a tiny model) in both formats, and `n2n denoise` of one
position into both formats. Skipped, with the reason, without napari and its readers (the ``viewer`` extra) or
Xvfb."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = ["DAPI", "GFP"]
T, P, Z = 3, 2, 2
HEIGHT, WIDTH = 24, 40  # not square: a swapped y and x would show
PIXEL_UM, Z_STEP_UM = 0.325, 1.5
SEQUENCE = f"""\
axis_order: tpcz
channels: [{", ".join(CHANNELS)}]
stage_positions: [{{x: 0, y: 0, z: 0}}, {{x: 100, y: -60, z: 0}}]
z_plan: {{range: {Z_STEP_UM}, step: {Z_STEP_UM}}}
time_plan: {{interval: 0, loops: {T}}}
"""
READERS = {"napari_ome_zarr": "napari-ome-zarr", "napari_tiff": "napari-tiff"}
MISSING = [pkg for mod, pkg in READERS.items() if importlib.util.find_spec(mod) is None]
needs_napari = pytest.mark.skipif(
    importlib.util.find_spec("napari") is None or bool(MISSING),
    reason=f"napari and its readers ({', '.join(READERS.values())}) not installed (pip install -e '.[viewer]')")


@pytest.fixture(scope="module")
def written(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`n2n acquire --mda` in OME-Zarr and in OME-TIFF, and `n2n denoise` of the OME-Zarr raw record's position 0
    into an OME-Zarr and an OME-TIFF: the paths and the acquisitions' reports."""
    from typer.testing import CliRunner

    from n2n.cli import app
    from streamer.micromanager.core import SIM_CFG

    base = tmp_path_factory.mktemp("open")
    cfg = base / "small.cfg"
    cfg.write_text(SIM_CFG.replace("Width,512", f"Width,{WIDTH}").replace("Height,512", f"Height,{HEIGHT}")
                   + f"#py Property,Camera,PixelSizeUm,{PIXEL_UM}\n")
    seq = base / "seq.yaml"
    seq.write_text(SEQUENCE)
    fast = ["--engine", "onnxruntime", "--precision", "fp32"]
    reports = {}
    for fmt in ("ome-zarr", "ome-tiff"):
        result = CliRunner().invoke(app, ["acquire", "--mda", str(seq), "--model", str(trained_run["run"]), "--out",
                                          str(base / fmt), "--format", fmt, "--mm-config", str(cfg), *fast])
        assert result.exit_code == 0, result.output
        reports[fmt] = json.loads((base / fmt / "acquire.json").read_text())["report"]
    again = {}
    for suffix in (".ome.zarr", ".ome.tif"):
        again[suffix] = base / f"again{suffix}"
        result = CliRunner().invoke(app, ["denoise", str(base / "ome-zarr" / "raw.ome.zarr" / "0"), "--model",
                                          str(trained_run["run"]), "--out", str(again[suffix]), *fast])
        assert result.exit_code == 0, result.output
    return {"base": base, "reports": reports, "again": again}


def records(written: dict[str, Any]) -> list[tuple[str, Path, int]]:
    """(what, path, position) of each image napari is to open: per format, record and position; `n2n denoise`'s."""
    base = written["base"]
    out = []
    for kind in ("raw", "denoised"):
        out += [(f"zarr {kind}", base / "ome-zarr" / f"{kind}.ome.zarr" / str(p), p) for p in range(P)]
        out += [(f"tiff {kind}", base / "ome-tiff" / kind / f"{kind}_p{p:03d}.ome.tif", p) for p in range(P)]
    out += [("zarr again", written["again"][".ome.zarr"], 0), ("tiff again", written["again"][".ome.tif"], 0)]
    return out


def read_ome_zarr(path: Path) -> dict[str, Any]:
    """An OME-Zarr image as ome-zarr reads it: pixels, axes, channel names, scale, and the image's name."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    location = parse_url(str(path))
    assert location is not None, path
    node = next(iter(Reader(location)()))
    meta = node.metadata
    (scale,) = [t["scale"] for t in meta["coordinateTransformations"][0] if t["type"] == "scale"]
    name = zarr.open_group(path, mode="r").attrs["ome"]["multiscales"][0].get("name")
    return {"pixels": np.asarray(node.data[0]), "axes": "".join(a["name"] for a in meta["axes"]).upper(),
            "units": {a["name"]: a.get("unit") for a in meta["axes"]}, "channels": meta["channel_names"],
            "scale": dict(zip("tczyx", scale)), "name": name}


def read_ome_tiff(path: Path, position: int) -> dict[str, Any]:
    """An OME-TIFF as tifffile reads it: this file's own planes (a multi-position record is a file per position,
    each file's OME-XML describing every position), axes, channel names and physical sizes."""
    with tifffile.TiffFile(path) as tif:
        images = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        image = images[position] if isinstance(images, list) else images
        series = tif.series[position if len(tif.series) > 1 else 0]
        assert series.pages[0].parent is tif, "the series read must be this file's own"
        pixels = series.asarray()
        planes = np.stack([page.asarray() for page in tif.pages])
    assert np.array_equal(pixels.reshape(planes.shape), planes)  # every page of the file, in the series
    px = image["Pixels"]
    channels = px["Channel"] if isinstance(px["Channel"], list) else [px["Channel"]]
    return {"pixels": pixels, "axes": series.axes, "channels": [str(c["Name"]) for c in channels],
            "scale": {"z": px.get("PhysicalSizeZ"), "y": px.get("PhysicalSizeY"), "x": px.get("PhysicalSizeX"),
                      "t": px.get("TimeIncrement")}, "name": None}


def read_record(what: str, path: Path, position: int) -> dict[str, Any]:
    return read_ome_zarr(path) if what.startswith("zarr") else read_ome_tiff(path, position)


def test_the_records_read_with_ome_zarr_and_tifffile_hold_every_plane_at_its_axes(written: dict[str, Any]) -> None:
    """Each position of each record, read with ome-zarr or tifffile: axes t, c, z, y, x with the sequence's sizes,
    its channel names, µm pixel and z sizes; in the raw records every (t, p, c, z) plane acquired, each a frame of
    its own (none empty, none a copy of another), and the denoised record the same planes denoised."""
    for fmt, report in written["reports"].items():
        assert report["frames"] == report["raw_recorded"] == report["denoised_frames"] == T * P * len(CHANNELS) * Z, fmt
    raw_planes: dict[str, list[np.ndarray]] = {"zarr": [], "tiff": []}
    for what, path, position in records(written):
        got = read_record(what, path, position)
        assert got["axes"] == "TCZYX", (what, path)
        assert got["pixels"].shape == (T, len(CHANNELS), Z, HEIGHT, WIDTH) and got["pixels"].dtype == np.uint16
        assert got["channels"] == CHANNELS, (what, path)
        assert got["scale"]["x"] == got["scale"]["y"] == PIXEL_UM and got["scale"]["z"] == Z_STEP_UM, (what, got)
        # a time plan at interval 0 has no time step: t is written as frame numbers (each frame's time is in its
        # metadata), never as a scale of 0 s that napari refuses
        assert got["scale"]["t"] in (1.0, None) and got.get("units", {}).get("t") is None, (what, got["scale"])
        if what.endswith("raw"):
            raw_planes[what.split()[0]] += list(got["pixels"].reshape(-1, HEIGHT, WIDTH))
        if what.endswith("denoised"):
            raw = read_record(what.replace("denoised", "raw"), Path(str(path).replace("denoised", "raw")), position)
            assert not np.array_equal(got["pixels"], raw["pixels"])
    for planes in raw_planes.values():
        assert len(planes) == T * P * len(CHANNELS) * Z
        assert all(plane.max() > 0 for plane in planes)  # the camera's offset: an empty plane would be zeros
        assert len({plane.tobytes() for plane in planes}) == len(planes)  # independent noise: every plane its own


@needs_napari
def test_napari_opens_each_record_with_its_channels_axes_and_scale(written: dict[str, Any], tmp_path: Path,
                                                                  display: dict[str, str]) -> None:
    """napari's own readers on each position of each record and on `n2n denoise`'s outputs: a layer per channel,
    named by the acquisition's channel (napari-ome-zarr puts the image's name first where the file names it), axes
    t, z, y, x in the file's order with their sizes, z, y and x scaled in µm as written, t in frames; each layer's
    pixels are the channel's planes as ome-zarr or tifffile read them."""
    opens = [(str(path), "napari-ome-zarr" if what.startswith("zarr") else "napari-tiff")
             for what, path, _ in records(written)]
    (tmp_path / "opens.json").write_text(json.dumps(opens))
    report, pixels = tmp_path / "napari.json", tmp_path / "napari.npz"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "napari_open.py"), str(tmp_path / "opens.json"),
                           str(report), str(pixels)], capture_output=True, text=True, timeout=300, env=display,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = json.loads(report.read_text())
    with np.load(pixels) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for what, path, position in records(written):
        opened = shown[str(path)]
        assert "error" not in opened, (what, opened)
        expected = read_record(what, path, position)
        prefix = f"{expected['name']}: " if what.startswith("zarr") and expected["name"] else ""
        layers = opened["layers"]
        assert [layer["name"] for layer in layers] == [prefix + c for c in CHANNELS], (what, path)
        for c, layer in enumerate(layers):
            assert layer["type"] == "Image" and layer["axis_labels"] == ["t", "z", "y", "x"], (what, layer)
            assert layer["shape"] == [T, Z, HEIGHT, WIDTH] and layer["dtype"] == "uint16", (what, layer)
            assert layer["scale"] == pytest.approx([1.0, Z_STEP_UM, PIXEL_UM, PIXEL_UM]), (what, layer)
            assert layer["units"] == ["pixel", "micrometer", "micrometer", "micrometer"], (what, layer)
            assert np.array_equal(arrays[layer["key"]], expected["pixels"][:, c]), (what, path, c)


def test_a_zero_scale_is_never_written(tmp_path: Path) -> None:
    """`n2n denoise` of an input whose time step is 0 s (a time plan at interval 0, as some writers record it):
    the OME-Zarr written scales t by 1 without a unit, the OME-TIFF gives no TimeIncrement; readers refuse a zero
    scale (napari). A channel label has the colour napari-ome-zarr needs to make a layer per channel."""
    import zarr

    from streamer.datasets.base import DatasetInfo
    from streamer.datasets.ometiff import write_ome_tiff
    from streamer.datasets.omezarr import OmeZarrWriter

    info = DatasetInfo(axes="TCYX", shape=(2, 2, 4, 5), dtype=np.dtype(np.uint16), name="cells",
                       physical={"T": (0.0, "s"), "Y": (0.5, "µm"), "X": (0.5, "µm")}, channel_names=CHANNELS)
    OmeZarrWriter.create(tmp_path / "out.ome.zarr", info, np.dtype(np.uint16))
    ome = zarr.open_group(tmp_path / "out.ome.zarr", mode="r").attrs["ome"]
    (multiscale,) = ome["multiscales"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 0.5, 0.5]
    assert multiscale["axes"][0] == {"name": "t", "type": "time"}
    assert [c["color"] for c in ome["omero"]["channels"]] == ["FFFFFF"] * 2
    planes = (np.full((4, 5), i, np.uint16) for i in range(4))
    write_ome_tiff(tmp_path / "out.ome.tif", info, planes, np.dtype(np.uint16))
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert "TimeIncrement" not in pixels and pixels["PhysicalSizeX"] == 0.5
