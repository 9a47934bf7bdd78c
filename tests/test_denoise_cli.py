"""``n2n denoise`` through the real command: bad inputs give one line and leave the input as it was; a kill -9
in the middle and a rerun give the pixels of an uninterrupted run; a recorded pycromanager NDTiff and an
OME-Zarr written by ome-zarr-py are denoised; a frame denoised offline is the frame the server sends."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_cli_errors import assert_one_error_line, n2n
from test_denoise import frames, opened

from streamer.offline import PROGRESS_NAME, denoise
from streamer.offline.config import DenoiseConfig

ROOT = Path(__file__).resolve().parent.parent


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    path = tmp_path / "raw.ome.tif"
    tifffile.imwrite(path, frames(4), ome=True, metadata={"axes": "TYX"})
    return path


def test_denoise_writes_the_output_and_a_summary(trained_run: dict[str, Path], stack: Path, tmp_path: Path) -> None:
    result = n2n("denoise", stack, "--model", trained_run["run"], "--out", tmp_path / "den.ome.tif",
                 "--precision", "fp32", "--json", tmp_path / "s.json")

    assert result.exit_code == 0, result.output
    assert tifffile.imread(tmp_path / "den.ome.tif").shape == (4, 64, 64)
    assert '"planes_denoised": 4' in (tmp_path / "s.json").read_text()


@pytest.mark.parametrize(("case", "expected"), [
    ("unknown format", "{input}: expected an OME-TIFF/TIFF file (.tif, .tiff), an OME-Zarr folder (.zarr) or a "
                       "Micro-Manager NDTiff dataset (a folder with NDTiff.index), got a .png file"),
    ("missing input", "{input}: no such file or folder"),
    ("output extension", "{out}: expected an output name ending in .ome.tif, .ome.tiff, .tif, .tiff (OME-TIFF) or "
                         ".zarr, .ome.zarr (OME-Zarr), got '.png'"),
    ("RGB samples", "{input}: expected axes among T, C, Z, Y, X (fluorescence planes), got RGB samples of size 3 "
                    "(axes 'YXS', shape (64, 64, 3))"),
    ("not OME-Zarr", "{input}: expected OME-Zarr 'multiscales' metadata in the group's attributes, found none (is "
                     "this a plain Zarr array rather than an OME-Zarr image?)"),
    ("missing axes", "{input}: expected 2 dimensions (axes ['t', 'y']), got an array of shape (2, 64, 64)"),
    ("Z stack of another bit depth", "{input}: expected uint16 planes (the bit depth {model} was trained on), got "
                                     "uint8; a model applies to the camera data it was trained on: train one on "
                                     "frames of this bit depth"),
    ("output exists", "{out}: already exists; pass --overwrite to replace it"),
    ("output is the input", "{input}: expected an output apart from the input {input}, got the input's own path"),
    ("no channel axis", "--channel 1: {input} has no channel axis (axes TYX)"),
    ("overwrite a folder of files", "{out}: expected an OME-Zarr output to replace, got a folder that is not one; "
                                    "not replaced (remove it yourself, or choose another --out)"),
])
def test_bad_input_is_one_line_and_leaves_the_input_alone(trained_run: dict[str, Path], tmp_path: Path, case: str,
                                                          expected: str) -> None:
    import zarr

    model, out, extra = trained_run["run"], tmp_path / "den.ome.tif", []
    source = tmp_path / "raw.ome.tif"
    tifffile.imwrite(source, frames(3), ome=True, metadata={"axes": "TYX"})
    if case == "unknown format":
        source = tmp_path / "raw.png"
        source.write_bytes(b"\x89PNG\r\n\x1a\n")
    elif case == "missing input":
        source = tmp_path / "nothing.tif"
    elif case == "output extension":
        out = tmp_path / "den.png"
    elif case == "RGB samples":
        tifffile.imwrite(source, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    elif case == "not OME-Zarr":
        source = tmp_path / "plain.zarr"
        zarr.open_group(source, mode="w").create_array("0", shape=(2, 64, 64), dtype="uint16")
    elif case == "missing axes":
        source = tmp_path / "noaxes.zarr"
        group = zarr.open_group(source, mode="w")
        group.create_array("0", shape=(2, 64, 64), dtype="uint16")
        group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": "t"}, {"name": "y"}],
                                                                 "datasets": [{"path": "0"}]}]}
    elif case == "Z stack of another bit depth":
        tifffile.imwrite(source, np.zeros((5, 64, 64), np.uint8), ome=True, metadata={"axes": "ZYX"})
    elif case == "output exists":
        out.write_bytes(b"results of yesterday")
    elif case == "output is the input":
        out = source
    elif case == "no channel axis":
        extra = ["--channel", "1"]
    elif case == "overwrite a folder of files":
        out, extra = tmp_path / "results.zarr", ["--overwrite"]
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = digest(source) if source.exists() else None
    kept = out.read_bytes() if out.is_file() else None

    result = n2n("denoise", source, "--model", model, "--out", out, *extra)

    assert_one_error_line(result.output, result.exit_code, expected.format(input=source, out=out, model=model))
    assert (digest(source) if source.exists() else None) == before
    if kept is not None:
        assert out.read_bytes() == kept
    if out.is_dir():
        assert (out / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob("*.partial.zarr"))


@pytest.fixture
def read_only_folder(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A folder this process cannot write: chmod where permissions bind (not root), else a read-only tmpfs."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root without a way to make a read-only folder (mount: {mounted.stderr!r})")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder_is_one_line(trained_run: dict[str, Path], stack: Path,
                                               read_only_folder: Path) -> None:
    before = digest(stack)

    result = n2n("denoise", stack, "--model", trained_run["run"], "--out", read_only_folder / "den.ome.tif")

    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: {read_only_folder}: cannot write the output there (")
    assert digest(stack) == before


def test_kill_9_in_the_middle_then_a_rerun_gives_the_uninterrupted_pixels(trained_run: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    raw = tmp_path / "big.ome.tif"
    tifffile.imwrite(raw, frames(32, size=1024), ome=True, metadata={"axes": "TYX"})
    cfg = tmp_path / "denoise.yaml"
    cfg.write_text("version: 1\nprecision: fp32\nthreads: 1\nchunk_mib: 2\n")  # tasks of one plane
    out = tmp_path / "den.ome.tif"
    log = tmp_path / f"den.ome.tif.partial.zarr/{PROGRESS_NAME}"
    cmd = [sys.executable, "-m", "n2n", "denoise", str(raw), "--model", str(trained_run["run"]), "--out", str(out),
           "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(log.read_text().splitlines())
    assert 3 <= done < 32 and not out.exists()

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} done before" in " ".join(rerun.stdout.split())
    whole = denoise(raw, trained_run["run"], tmp_path / "whole.zarr", DenoiseConfig(precision="fp32", threads=1))
    assert whole["planes_resumed"] == 0
    assert np.array_equal(opened(out)[1], opened(tmp_path / "whole.zarr")[1])


def test_an_ome_zarr_written_by_ome_zarr_py_is_denoised_keeping_its_metadata(trained_run: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    planes = frames(6).reshape(3, 2, 64, 64)
    group = zarr.open_group(tmp_path / "in.zarr", mode="w")
    write_image(planes, group, axes="tcyx", scale={"t": 2.0, "c": 1.0, "y": 0.5, "x": 0.5},
                axes_units={"t": "second", "y": "micrometer", "x": "micrometer"}, scale_factors=[])
    group.attrs["ome"] = {**group.attrs["ome"], "omero": {"channels": [{"label": "DAPI"}, {"label": "GFP"}]}}

    denoise(tmp_path / "in.zarr", trained_run["run"], tmp_path / "out.ome.zarr", DenoiseConfig(precision="fp32"))

    info, pixels = opened(tmp_path / "out.ome.zarr")
    assert (info.axes, info.shape, info.dtype) == ("TCYX", (3, 2, 64, 64), np.uint16)
    assert info.physical == {"T": (2.0, "s"), "Y": (0.5, "µm"), "X": (0.5, "µm")}
    assert info.channel_names == ["DAPI", "GFP"]
    assert pixels.shape == (6, 64, 64) and not np.array_equal(pixels, planes.reshape(6, 64, 64))
    node = next(iter(Reader(parse_url(tmp_path / "out.ome.zarr"))()))  # ome-zarr-py reads what we wrote
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "c", "y", "x"]
    assert node.data[0].shape == (3, 2, 64, 64)


def test_a_pycromanager_ndtiff_recording_is_denoised_keeping_its_axes(trained_run: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    recorded = subprocess.run([sys.executable, str(ROOT / "tests" / "mm_ndtiff.py"), str(tmp_path / "rec")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    source = Path(json.loads(recorded.stdout.splitlines()[-1])["folder"])
    src_info, src = opened(source)

    denoise(source, trained_run["run"], tmp_path / "den.ome.tif", DenoiseConfig(precision="fp32"))

    info, pixels = opened(tmp_path / "den.ome.tif")
    assert (info.axes, info.shape, info.channel_names) == (src_info.axes, src_info.shape, src_info.channel_names)
    assert info.plane_metadata == src_info.plane_metadata
    assert info.physical["X"] == src_info.physical["X"]
    assert pixels.dtype == np.uint16 and pixels.shape == src.shape and not np.array_equal(pixels, src)


def test_a_frame_denoised_offline_is_the_frame_the_server_sends(trained_run: dict[str, Path], tmp_path: Path) -> None:
    from serverkit import config

    from streamer.client import StreamClient
    from streamer.server import running_server

    raw = frames(5, seed=9)
    tifffile.imwrite(tmp_path / "raw.ome.tif", raw, ome=True, metadata={"axes": "TYX"})
    denoise(tmp_path / "raw.ome.tif", trained_run["run"], tmp_path / "den.zarr",
            DenoiseConfig(precision="fp32", threads=1))
    offline = opened(tmp_path / "den.zarr")[1]

    with running_server(trained_run["run"], config(mode="lossless")) as server, \
            StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for i, frame in enumerate(raw):
            client.send(frame, seq=i)
        live = [client.receive() for _ in raw]

    assert [r.seq for r in live] == list(range(5))
    assert all(np.array_equal(a, r.pixels) for a, r in zip(offline, live))
    assert not np.array_equal(offline, raw)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_cleanly_says_how_to_continue_and_the_rerun_finishes(trained_run: dict[str, Path],
                                                                         tmp_path: Path, workers: int) -> None:
    raw = tmp_path / "big.ome.tif"
    tifffile.imwrite(raw, frames(24, size=1024), ome=True, metadata={"axes": "TYX"})
    cfg = tmp_path / "denoise.yaml"
    cfg.write_text(f"version: 1\nprecision: fp32\nthreads: 1\nchunk_mib: 2\nworkers: {workers}\n")
    out = tmp_path / "den.zarr"
    cmd = [sys.executable, "-m", "n2n", "denoise", str(raw), "--model", str(trained_run["run"]), "--out", str(out),
           "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / PROGRESS_NAME
    deadline = time.monotonic() + 90
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert "interrupted: stopped after" in " ".join(err.split()) and "Traceback" not in err
    assert "rerun the same command to continue" in " ".join(err.split())
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert opened(out)[0].shape == (24, 1024, 1024) and not (out / PROGRESS_NAME).exists()
