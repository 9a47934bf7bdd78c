"""Issue 32: the pycromanager hook's ``keep_raw`` keeps the acquisition's axes. A folder gets an NDTiff dataset, each
raw image bit-exact at its ``Axes`` with its metadata, complete after the acquisition, an exception or a crash, and
``n2n denoise`` takes it with its axes; a ``.ome.tif`` keeps a time series and refuses an image with another axis
rather than flatten it. ``hook.with_raw`` returns the raw image beside the denoised one, under a channel of its own,
where pycromanager takes a list (its Java backend), and the denoised one alone, saying so, under its Python backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT
from ndstorage import Dataset
from serverkit import camera_frames, config
from test_cli_errors import n2n
from test_denoise import opened, served

from streamer.datasets.ndtiff import NdTiffReader
from streamer.micromanager import denoise_hook
from streamer.micromanager.hook import RAW_CHANNEL_SUFFIX
from streamer.server import running_server
from streamer.sources.tiff import read_frame_metadata

DOWN = "tcp://127.0.0.1:47989"  # nothing listens here
CHANNELS = ("DAPI", "GFP")
T, Z = 3, 2


def acquisition(seed: int = 71, size: int = 64) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """2 channels × 2 z × 3 time points in pycromanager's event order (t, then channel, then z), each image its own
    pixels (GFP dimmer), each with metadata as pycromanager gives it."""
    frames = camera_frames(T * len(CHANNELS) * Z, size=size, seed=seed)
    images = []
    for i, (t, c, z) in enumerate((t, c, z) for t in range(T) for c in range(len(CHANNELS)) for z in range(Z)):
        name = CHANNELS[c]
        image = frames[i] if c == 0 else (frames[i] // 3).astype(np.uint16)
        meta = {"Axes": {"time": t, "channel": name, "z": z}, "ImageNumber": str(i), "Channel": name,
                "Camera": "Camera", "ZPosition_um": 1.5 * z, "PixelSizeUm": 0.65, "ElapsedTime-ms": 200.0 * t + i}
        images.append((image, meta))
    return images


@pytest.fixture(scope="module")
def recorded(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The acquisition through the hook on a real server, keep_raw a folder; what it returned."""
    folder = tmp_path_factory.mktemp("hook_raw") / "raw"
    images = acquisition()
    with running_server(trained_run["run"], config()) as server, \
            denoise_hook(server.endpoints, keep_raw=folder) as hook:
        returned = [hook(image, dict(meta)) for image, meta in images]
    return {"folder": folder, "images": images, "returned": returned, "counts": hook.counts()}


def test_keep_raw_keeps_every_image_at_its_axes_bit_exact(recorded: dict[str, Any]) -> None:
    """Read back with ndstorage (what pycromanager reads with): every raw image at its Axes, bit-exact, with the
    metadata it came with; the record's shape is the acquisition's (T, C, Z), while the hook returned denoised
    images."""
    images, returned = recorded["images"], recorded["returned"]
    with Dataset(str(recorded["folder"])) as ds:
        assert len(ds.get_image_coordinates_list()) == len(images) == 12
        for image, meta in images:
            stored = np.asarray(ds.read_image(**meta["Axes"]))
            assert stored.dtype == np.uint16 and np.array_equal(stored, image), meta["Axes"]
            assert ds.read_metadata(**meta["Axes"]) == meta
    assert recorded["counts"]["raw_saved"] == 12 and recorded["counts"]["raw_errors"] == 0
    assert recorded["counts"]["denoised"] == 12
    assert all(m["n2n-raw-saved"] is True and m["n2n-denoised"] is True for _, m in returned)
    assert all(not np.array_equal(out, image) for (out, _), (image, _) in zip(returned, images))

    reader = NdTiffReader(recorded["folder"])
    try:
        info = reader.info
        assert (info.axes, info.shape, info.channel_names) == ("TCZYX", (T, 2, Z, 64, 64), list(CHANNELS))
        assert info.physical["Z"] == (1.5, "µm") and info.physical["X"] == (0.65, "µm")
    finally:
        reader.close()


def test_n2n_denoise_takes_the_raw_record_with_its_axes(recorded: dict[str, Any], trained_run: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """``n2n denoise RECORD --model DAPI=RUN``: the output keeps T, C, Z and the channel names; the DAPI planes are
    what the live server sent the hook for the same images, the GFP planes (no model) the raw ones."""
    out = tmp_path / "den.ome.tif"
    result = n2n("denoise", recorded["folder"], "--model", f"DAPI={trained_run['run']}", "--out", out,
                 "--precision", "fp32", "--threads", "1")
    assert result.exit_code == 0, result.output

    info, planes = opened(out)
    assert (info.axes, info.shape, info.channel_names) == ("TCZYX", (T, 2, Z, 64, 64), list(CHANNELS))
    by_axes = {(m["Axes"]["time"], m["Axes"]["channel"], m["Axes"]["z"]): (image, out_image)
               for (image, m), (out_image, _) in zip(recorded["images"], recorded["returned"])}
    planes = planes.reshape(T, 2, Z, 64, 64)
    for (t, channel, z), (raw, live) in by_axes.items():
        plane = planes[t, CHANNELS.index(channel), z]
        if channel == "DAPI":
            assert np.array_equal(plane, live), (t, z)
            assert np.array_equal(plane, served(trained_run["run"], raw[None])[0])
        else:
            assert np.array_equal(plane, raw), (t, z)


def test_a_tif_keep_raw_refuses_images_whose_other_axes_change(tmp_path: Path) -> None:
    """One OME-TIFF keeps a time series: of an acquisition with channels and z, the first image is kept (at
    channel DAPI, z 0) and each image at another channel or plane refused, counted and told where to keep it; no
    file flattens them."""
    with denoise_hook(DOWN, timeout_s=0.1, keep_raw=tmp_path / "raw.ome.tif") as hook:
        metas = [hook(image, dict(meta))[1] for image, meta in acquisition()[:4]]

    assert hook.raw_refused == hook.raw_errors == 3 and hook.raw_saved == 1
    assert metas[0]["n2n-raw-saved"] is True
    for meta, changed in zip(metas[1:], ("z=1", "channel='GFP'", "channel='GFP', z=1")):
        assert meta["n2n-raw-saved"] is False
        assert f"this image's {changed} would be flattened into T" in meta["n2n-raw-error"]
        assert "give keep_raw a folder" in meta["n2n-raw-error"]
    assert [m["Axes"] for m in read_frame_metadata(tmp_path / "raw.ome.tif")] == [metas[0]["Axes"]]


def test_keep_raw_never_writes_over_a_record_and_says_so_before_the_acquisition(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "NDTiff.index").write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected a new or empty folder .* a folder that holds files"):
        denoise_hook(DOWN, keep_raw=tmp_path / "used")
    with pytest.raises(ValueError, match="does not write OME-Zarr"):
        denoise_hook(DOWN, keep_raw=tmp_path / "raw.ome.zarr")
    (tmp_path / "empty").mkdir()
    denoise_hook(DOWN, keep_raw=tmp_path / "empty").close()  # an empty folder is taken (and left empty)
    assert list((tmp_path / "empty").iterdir()) == []


def test_the_record_refuses_what_it_cannot_hold_at_its_axes(tmp_path: Path) -> None:
    """Exactly or not at all: a place and time saved already, pixels NDTiff (uint16) cannot hold, an axis value that
    is not a number or a name; each refused with why, and counted; the rest saved."""
    (first, meta), (second, meta2) = acquisition(size=32)[:2]
    cases = [
        (second, meta, "is in raw already"),
        (np.full((32, 32), 2.5, np.float32), {"Axes": {"time": 9}}, "fractions or precision lost"),
        (np.full((32, 32), 70000, np.int32), {"Axes": {"time": 9}}, "do not fit uint16"),
        (second, {"Axes": {"time": 1.5}}, "expected Axes of names and integer or text values"),
    ]
    with denoise_hook(DOWN, timeout_s=0.1, keep_raw=tmp_path / "raw") as hook:
        assert hook(first, dict(meta))[1]["n2n-raw-saved"] is True
        for image, m, why in cases:
            got = hook(image, dict(m))[1]
            assert got["n2n-raw-saved"] is False and why in got["n2n-raw-error"], got["n2n-raw-error"]
        assert hook(np.full((32, 32), 7.0), dict(meta2))[1]["n2n-raw-saved"] is True  # float64 held exactly

    assert hook.raw_refused == 4 and hook.raw_saved == 2
    with Dataset(str(tmp_path / "raw")) as ds:
        assert len(ds.get_image_coordinates_list()) == 2
        assert np.array_equal(ds.read_image(**meta["Axes"]), first)
        assert np.array_equal(ds.read_image(**meta2["Axes"]), np.full((32, 32), 7, np.uint16))


_WRITER = """
import os, sys
import numpy as np
from streamer.micromanager import denoise_hook
hook = denoise_hook("{down}", timeout_s=0.1, keep_raw=sys.argv[1])
for t in range(3):
    for c in ("DAPI", "GFP"):
        hook(np.full((16, 24), 10 * t + len(c), np.uint16), {{"Axes": {{"time": t, "channel": c}}}})
if sys.argv[2] == "crash":
    os._exit(3)  # no close, no interpreter exit: a killed process
"""  # "exit": the script ends without hook.close()


@pytest.mark.parametrize("end", ["exception", "crash", "exit"])
def test_the_record_is_complete_after_an_exception_a_crash_or_an_exit_without_close(tmp_path: Path, end: str) -> None:
    """Every image saved before the end is read back at its axes: the with block left by an exception, the process
    killed (each image's index entry is on disk with it), or ended without close() (finished at exit)."""
    folder = tmp_path / "raw"
    if end == "exception":
        with pytest.raises(RuntimeError, match="the acquisition failed"), \
                denoise_hook(DOWN, timeout_s=0.1, keep_raw=folder) as hook:
            for t in range(3):
                for c in ("DAPI", "GFP"):
                    hook(np.full((16, 24), 10 * t + len(c), np.uint16), {"Axes": {"time": t, "channel": c}})
            raise RuntimeError("the acquisition failed")
    else:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        proc = subprocess.run([sys.executable, "-c", _WRITER.format(down=DOWN), str(folder), end],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == (3 if end == "crash" else 0), proc.stderr[-2000:]

    with Dataset(str(folder)) as ds:
        assert len(ds.get_image_coordinates_list()) == 6
        for t in range(3):
            for c in ("DAPI", "GFP"):
                assert np.array_equal(ds.read_image(time=t, channel=c), np.full((16, 24), 10 * t + len(c)))
    stack = next(folder.glob("*.tif"))
    if end != "crash":  # finished: ndstorage cuts the stack file to what it holds (it is made 4 GiB, sparse)
        assert stack.stat().st_size < 1 << 20


def test_with_raw_returns_the_denoised_and_the_raw_image_as_two_channels(trained_run: dict[str, Path]) -> None:
    """A list of two (image, metadata), as pycromanager's Java backend takes: the denoised image at its channel, the
    raw one (the very pixels given) at "DAPI raw", Axes and Channel both; without a channel axis the two become
    channels "denoised" and "raw"; the caller's metadata is left as it was."""
    (image, meta), = acquisition()[:1]
    given = json.loads(json.dumps(meta))
    with running_server(trained_run["run"], config()) as server, denoise_hook(server.endpoints) as hook:
        (den, den_meta), (raw, raw_meta) = hook.with_raw(image, meta)
        (_, t_meta), (t_raw, t_raw_meta) = hook.with_raw(image, {"Axes": {"time": 0}, "ImageNumber": "1"})
        expected = server.denoiser(image)

    assert meta == given
    assert np.array_equal(den, expected) and den_meta["n2n-denoised"] is True
    assert den_meta["Axes"] == {"time": 0, "channel": "DAPI", "z": 0} and den_meta["Channel"] == "DAPI"
    assert raw is image and raw_meta["Axes"] == {"time": 0, "channel": "DAPI" + RAW_CHANNEL_SUFFIX, "z": 0}
    assert raw_meta["Channel"] == "DAPI raw" and raw_meta["n2n-raw-copy"] is True and raw_meta["n2n-denoised"] is False
    assert {k: v for k, v in raw_meta.items() if k not in ("Axes", "Channel", "n2n-raw-copy", "n2n-denoised")} == \
        {k: v for k, v in given.items() if k not in ("Axes", "Channel")}
    assert (t_meta["Axes"], t_meta["Channel"]) == ({"time": 0, "channel": "denoised"}, "denoised")
    assert (t_raw_meta["Axes"], t_raw_meta["Channel"]) == ({"time": 0, "channel": "raw"}, "raw") and t_raw is image
    assert hook.raw_emitted == 2 and hook.counts()["raw_not_emitted"] == 0


def test_a_pycromanager_acquisition_with_channels_and_z_keeps_its_axes_raw_and_denoised(
        trained_run: dict[str, Path], tmp_path: Path) -> None:
    """A real pycromanager Acquisition (Python backend) of 3 time points × 2 channels × 2 z planes through
    ``hook.with_raw`` and ``keep_raw``: the acquisition stores the denoised images and the raw record the raw ones,
    at the same axes, each denoised image the server's output for the raw one kept at its place; the Python backend
    takes one image per image, so the raw copy is not emitted and every image says so; nothing is left running."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "mm_hook_axes.py"), str(trained_run["run"]),
                           str(tmp_path), "3"], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["stored"] == got["raw_saved"] == 12 and got["same_axes"] is True
    assert got["axes"] == ["channel", "time", "z"] and got["channels"] == got["expected_channels"]
    assert got["raw_dtypes"] == ["uint16"] and got["identical"] is True and got["differs_from_raw"] is True
    assert got["raw_axes_in_metadata"] is True
    assert got["denoised_flagged"] == got["not_emitted_flagged"] == 12
    counts = got["hook"]
    assert counts["frames"] == counts["denoised"] == counts["raw_saved"] == counts["raw_not_emitted"] == 12
    assert counts["errors"] == counts["raw_errors"] == counts["raw_emitted"] == 0
    assert got["threads_left"] == [] and got["engine_released"] is True
