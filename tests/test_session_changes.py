"""Issue 32, acceptance: a session that changes as it goes. A channel renamed mid-session (or a preset with no model)
and a new ROI mid-acquisition, through every live path with real parts: the server (a model set, with and without a
default), the pycromanager hook (its Axes, and a real pycromanager acquisition), ``n2n bridge`` (the real UniMMCore's
channel group read per frame, its ROI set while the bridge runs) and ``n2n acquire`` (a useq sequence whose position
sets another camera width). Frames under a new channel name go to the default model or back raw (flagged
``raw:no_model``, counted, said once), never to another channel's model nor into its history; a frame of another
size restarts its stream's history, and every raw frame is kept (a record per frame size, beside the first). Real
ZeroMQ on 127.0.0.1, real ONNX Runtime, tiny real K = 3 models."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import REPO_ROOT, tiny_train_dict
from ndstorage import Dataset
from serverkit import camera_frames, config
from test_model_sets import renormalised
from waiting import GENEROUS_S, Finishing, wait_for

from streamer.client import ServerError, StreamClient
from streamer.core.modelset import NO_MODEL_FLAG, ModelSet
from streamer.denoiser import Denoiser, is_raw
from streamer.micromanager import denoise_hook
from streamer.server import ServeConfig, load_denoiser, running_server
from streamer.sources import read_frame_metadata
from trainer.config import TrainConfig

K = 3
SIZE = 32  # the simulated camera's sensor in the Micro-Manager tests
ROI = (4, 8, 24, 16)  # x, y, width, height: frames of 16 × 24


def lossless(**overrides: Any) -> ServeConfig:
    """A lossless test server whose K-frame histories depend on the frames alone (no motion check)."""
    return config(mode="lossless", motion_threshold=None, **overrides)


@pytest.fixture(scope="module")
def models(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three K = 3 models whose outputs differ: DAPI's (trained), GFP's and a default (the same network read on
    other brightness scales)."""
    from trainer.run import run_training

    base = tmp_path_factory.mktemp("session_changes")
    dapi = base / "dapi"
    run_training(TrainConfig.model_validate(tiny_train_dict(model={"input_frames": K}, quantize={"int8": False})),
                 dapi, [trained_run["raw"]], [trained_run["truth"]])
    return {"DAPI": dapi, "GFP": renormalised(dapi, base / "gfp", 0.85),
            "default": renormalised(dapi, base / "other", 0.7)}


@pytest.fixture(scope="module")
def dens(models: dict[str, Path]) -> dict[str, Denoiser]:
    return {name: load_denoiser(path, config()) for name, path in models.items()}


def model_set(models: dict[str, Path], default: bool) -> ModelSet:
    return ModelSet({"DAPI": str(models["DAPI"]), "GFP": str(models["GFP"])},
                    str(models["default"]) if default else None)


@contextlib.contextmanager
def said(name: str = "n2n") -> Iterator[list[str]]:
    """The log lines of logger ``name`` (and below) at INFO and above while inside, whatever the CLI configured."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, handler = logging.getLogger(name), Keep(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Histories:
    """The frames before each frame of a stream as the server keeps them (oldest first, at most K−1), restarted
    when the frame size changes: what a test denoises its expected output with."""

    def __init__(self) -> None:
        self._held: dict[str, list[np.ndarray]] = {}

    def advance(self, stream: str, frame: np.ndarray) -> list[np.ndarray]:
        held = self._held.setdefault(stream, [])
        if held and held[-1].shape != frame.shape:
            held.clear()
        previous = list(held[-(K - 1):])
        held.append(frame)
        return previous


# --- the server ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("default", [False, True], ids=["no default", "a default"])
def test_a_renamed_channel_goes_to_the_default_or_back_raw_never_to_its_old_model(
        models: dict[str, Path], dens: dict[str, Denoiser], default: bool) -> None:
    """DAPI and GFP in event order; from t = 3 GFP's frames arrive as "GFP-488" (the preset renamed), at t = 6 as
    GFP again. GFP-488 frames are denoised by the default from their own history, or come back bit-identical,
    flagged raw:no_model, counted by name; never by GFP's model; GFP's history goes on from its own frames (t = 6
    uses t = 1, 2, not GFP-488's); one log line names the new channel."""
    frames = {"DAPI": camera_frames(7, seed=81), "GFP": camera_frames(7, seed=82)}
    sent = [(c, t, frames[c][t], "GFP-488" if c == "GFP" and 3 <= t <= 5 else c) for t in range(7) for c in frames]
    seqs: dict[str, int] = {}

    with said() as lines, running_server(model_set(models, default), lossless()) as server, \
            StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for _, _, frame, name in sent:  # each stream numbered on its own, as the hook numbers them
            seqs[name] = seqs.get(name, -1) + 1
            client.send(frame, seq=seqs[name], meta={"channel": name})
        results = [client.receive() for _ in sent]
        status = client.status()

    history = Histories()
    for (_, t, frame, name), result in zip(sent, results):
        assert result.header["meta"]["channel"] == name
        previous = history.advance(name, frame)
        if name in ("DAPI", "GFP"):
            assert np.array_equal(result.pixels, dens[name](frame, previous=previous)), (name, t)
            continue
        assert not np.array_equal(result.pixels, dens["GFP"](frame, previous=previous)), t  # never GFP's model
        if default:
            assert np.array_equal(result.pixels, dens["default"](frame, previous=previous)), t
            assert "flags" not in result.header and result.header["model"] == models["default"].name
        else:
            assert np.array_equal(result.pixels, frame) and result.header["flags"] == [NO_MODEL_FLAG]
    mixed = dens["GFP"](frames["GFP"][6], previous=list(frames["GFP"][4:6]))  # GFP-488's frames taken as GFP's
    assert not np.array_equal(results[-1].pixels, mixed)
    assert status["no_model"] == ({} if default else {"GFP-488": 3})
    assert status["served_raw"] == (0 if default else 3) and status["errors"] == 0
    assert status["history_resets"] == {} and status["frames_out"] == len(sent)
    assert len([line for line in lines if "'GFP-488'" in line]) == 1, lines


@pytest.mark.parametrize("served", ["one model", "a model set"])
def test_a_frame_of_another_size_restarts_its_history_and_the_server_serves_on(
        models: dict[str, Path], dens: dict[str, Denoiser], served: str) -> None:
    """One stream: three 64 × 64 frames, three of a new ROI (32 × 48), one full frame again; and a frame no model
    takes (1 × 64), refused in one reply. The first frame of each new size is denoised alone, the next from the
    frames of its size only; two resets counted as "shape"; the server serves on."""
    full, roi, back = camera_frames(3, seed=83), camera_frames(3, seed=84)[:, 8:40, 4:52], camera_frames(1, seed=85)
    stream = [*full, *roi, *back]
    spec: Any = str(models["DAPI"]) if served == "one model" else ModelSet({"GFP": str(models["DAPI"])})

    with running_server(spec, lossless()) as server, StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for seq, frame in enumerate(stream):
            client.send(np.ascontiguousarray(frame), seq=seq, meta={"channel": "GFP"})
        results = [client.receive() for _ in stream]
        with pytest.raises(ServerError, match=r"expected height and width >= \d+, got shape .1, 64."):
            client.request(np.zeros((1, 64), np.uint16), meta={"channel": "GFP"})
        after = client.request(full[0], meta={"channel": "GFP"})
        status = client.status()

    history = Histories()
    for seq, (frame, result) in enumerate(zip(stream, results)):
        assert result.seq == seq and result.pixels.shape == frame.shape
        assert np.array_equal(result.pixels, dens["DAPI"](frame, previous=history.advance("GFP", frame))), seq
    assert np.array_equal(results[3].pixels, dens["DAPI"](roi[0], previous=[]))  # alone: a new size, a new start
    assert np.array_equal(after.pixels, dens["DAPI"](full[0], previous=[]))
    assert status["history_resets"] == {"shape": 2} and status["errors_by_kind"] == {"bad_shape": 1}
    assert status["frames_out"] == len(stream) + 1


# --- the pycromanager hook ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("record", ["raw", "raw.ome.tif"], ids=["NDTiff folder", "OME-TIFF"])
def test_the_hooks_raw_record_continues_beside_itself_at_a_new_roi(
        models: dict[str, Path], dens: dict[str, Denoiser], tmp_path: Path, record: str) -> None:
    """Images of 64 × 64 (t 0-2), of a new ROI (32 × 48, t 3-4), then full again (t 5): each denoised from the
    images of its size before it, each saved raw bit-exact; the first image of the new size begins a record of its
    own beside the first (raw_2), said in one line, and the full images after it go on in the first (a record per
    size, never one per change); nothing refused."""
    images = [*camera_frames(3, seed=86), *camera_frames(2, seed=87)[:, 8:40, 4:52], *camera_frames(1, seed=88)]
    images = [np.ascontiguousarray(image) for image in images]
    stem, dot, suffix = record.partition(".")
    paths = [tmp_path / record, tmp_path / f"{stem}_2{dot}{suffix}"]

    with said() as lines, running_server(models["DAPI"], config(motion_threshold=None)) as server, \
            denoise_hook(server.endpoints, keep_raw=tmp_path / record) as hook:
        returned = [hook(image, {"Axes": {"time": t}, "ImageNumber": str(t)}) for t, image in enumerate(images)]

    history = Histories()
    for t, (image, (out, meta)) in enumerate(zip(images, returned)):
        assert meta["n2n-denoised"] is True and meta["n2n-raw-saved"] is True, meta
        assert np.array_equal(out, dens["DAPI"](image, previous=history.advance("", image))), t
    assert hook.raw_records == [str(p) for p in paths]
    counts = hook.counts()
    assert counts["raw_saved"] == 6 and counts["raw_errors"] == counts["raw_refused"] == 0
    assert counts["raw_records"] == 2
    for path, times in zip(paths, ([0, 1, 2, 5], [3, 4])):
        if record == "raw":
            with Dataset(str(path)) as ds:
                assert sorted(c["time"] for c in ds.get_image_coordinates_list()) == times
                for t in times:
                    assert np.array_equal(ds.read_image(time=t), images[t])
        else:
            saved, meta = tifffile.imread(path), read_frame_metadata(path)
            assert [m["Axes"]["time"] for m in meta] == times
            assert np.array_equal(saved.reshape(len(times), *images[times[0]].shape), np.stack(
                [images[t] for t in times]))
    new = [line for line in lines if "came after" in line]
    assert len(new) == 1 and str(paths[1]) in new[0], lines


def test_a_pycromanager_acquisition_through_a_renamed_preset_and_a_new_roi_keeps_every_image(
        models: dict[str, Path], tmp_path: Path) -> None:
    """Real pycromanager Acquisitions (Python backend) on the in-process core, a model for each of FITC and TRITC,
    one session through one hook with keep_raw: t = 0, 1; then the TRITC preset renamed TRITC-561 (core.renameConfig)
    and t = 2, 3 with it, the camera's ROI set before t = 3 (mid-acquisition). TRITC-561 images come back raw,
    marked raw:no_model and counted (said once); t = 3's images are of the ROI, each the model's answer from its own
    size's images; every raw image is kept at its axes, the ROI's in the record beside the first (said once)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "mm_session_changes.py"),
                           str(models["DAPI"]), str(models["GFP"]), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    counts = got["hook"]
    assert counts["frames"] == 8 and counts["denoised"] == 6 and counts["served_raw"] == 2
    assert counts["raw_saved"] == 8 and counts["raw_errors"] == 0 and counts["raw_records"] == 2
    assert got["flags"] == {"TRITC-561": [NO_MODEL_FLAG, NO_MODEL_FLAG]}
    assert got["raw_records"] == [str(tmp_path / "raw"), str(tmp_path / "raw_2")]
    assert got["raw_times"] == [[0, 1, 2], [3]] and got["raw_identical"] is True
    assert got["raw_channels"] == [["FITC", "TRITC", "TRITC-561"], ["FITC", "TRITC-561"]]
    assert got["shapes"] == {"0": [24, 40], "1": [24, 40], "2": [24, 40], "3": [16, 24]}
    assert got["denoised_as_expected"] is True
    assert got["no_model"] == {"TRITC-561": 2} and got["history_resets"] == {"shape": 1}
    assert got["said_no_model"] == 1 and got["said_new_record"] == 1
    assert got["threads_left"] == [] and got["engine_released"] is True


# --- n2n bridge on the real UniMMCore ------------------------------------------------------------------------------
@pytest.fixture
def scope() -> Iterator[Any]:
    """The simulated microscope (Channel group DAPI, GFP, Cy5) at SIZE × SIZE, 5 ms, set to GFP; released after."""
    from streamer.micromanager.core import close_core, load_core

    mmc = load_core("sim")
    mmc.setProperty("Camera", "Width", SIZE)
    mmc.setProperty("Camera", "Height", SIZE)
    mmc.setExposure(5.0)
    mmc.setConfig("Channel", "GFP")
    mmc.waitForConfig("Channel", "GFP")
    yield mmc
    close_core(mmc)
    del mmc
    gc.collect()


def bridge_with_changes(scope: Any, endpoints: dict[str, str], out: Path,
                        changes: list[Callable[[], None]]) -> Any:
    """``n2n bridge``'s loop from the scope's camera to the server, open-ended: once three frames are back, each of
    ``changes`` is made on the core in turn, the next (or the stop) once three frames the camera took after it are
    back (the camera's ``SimulatorFrame`` counts the frames it took: those after a change are of it). Its report."""
    from streamer.micromanager.bridge import run_bridge
    from streamer.sources.micromanager import MicroManagerSource

    back: list[int] = [0]

    def progress(report: Any) -> None:
        back.append(report.frames_denoised + report.frames_kept_raw)

    def taken() -> int:
        return int(scope.getProperty("Camera", "SimulatorFrame"))

    def until_back(n: int) -> None:
        wait_for(lambda: back[-1] >= n, f"{n} frames bridged", timeout=GENEROUS_S)

    first = taken()
    source = MicroManagerSource(scope)
    stop = threading.Event()
    try:
        bridge = Finishing("the bridge, asked to stop,", run_bridge, source, endpoints, frames=None, out=out,
                           timeout_s=10, stop=stop, progress=progress)
        until_back(3)
        for change in changes:
            change()
            until_back(taken() - first + 3)
        stop.set()
        return bridge.result()
    finally:
        stop.set()
        source.close()


def planes(paths: list[str]) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any], str]]:
    """Every plane of the bridge's files, in order: raw, denoised, its metadata, its file."""
    out = []
    for path in paths:
        saved, meta = tifffile.imread(path), read_frame_metadata(path)
        saved = saved.reshape(len(meta), 2, *saved.shape[-2:])
        out += [(pair[0], pair[1], m, path) for pair, m in zip(saved, meta)]
    return out


@pytest.mark.parametrize(("change", "default"), [("rename", False), ("rename", True), ("new preset", False)],
                         ids=["renamed, no default", "renamed, a default", "a new preset"])
def test_the_bridge_sends_a_changed_channel_under_its_new_name(
        scope: Any, models: dict[str, Path], dens: dict[str, Denoiser], tmp_path: Path, change: str,
        default: bool) -> None:
    """The bridge runs on GFP; mid-run the preset is renamed GFP-488 (core.renameConfig), or a new preset without a
    model (BF, the open filter wheel) is defined and set. Every camera frame is in the OME-TIFF (consecutive image
    numbers), named by the preset current when it was sent: GFP frames denoised by GFP's model from GFP frames only,
    the new name's by the default from its own, or kept raw, flagged raw:no_model, counted and said once."""
    new = "GFP-488" if change == "rename" else "BF"

    def rename() -> None:
        if change == "rename":
            scope.renameConfig("Channel", "GFP", "GFP-488")
        else:
            scope.defineConfig("Channel", "BF", "Emission", "Label", "Open")
            scope.setConfig("Channel", "BF")

    out = tmp_path / "bridge.ome.tif"
    with said() as lines, running_server(model_set(models, default), lossless(), warmup_shape=(SIZE, SIZE)) as server:
        report = bridge_with_changes(scope, server.endpoints, out, [rename])
        with StreamClient(server.endpoints) as client:
            status = client.status()

    got = planes([str(out)])
    names = [m["channel"] for _, _, m, _ in got]
    assert names == sorted(names, key=lambda n: n == new) and set(names) == {"GFP", new}  # GFP, then the new name
    numbers = [m["ImageNumber"] for _, _, m, _ in got]
    assert numbers == list(range(numbers[0], numbers[0] + len(got))) and len(got) == report.frames_seen
    assert report.planes_written == report.frames_seen == report.frames_denoised + report.frames_kept_raw
    assert report.frames_failed == report.frames_unaccounted == report.frames_dropped == 0
    history = Histories()
    for raw, served, meta, _ in got:
        name = meta["channel"]
        previous = history.advance(name, raw)
        if name == "GFP" or default:
            den = dens["GFP" if name == "GFP" else "default"]
            assert np.array_equal(served, den(raw, previous=previous)), meta  # (raw where its output check says so)
            assert meta["n2n-denoised"] is not is_raw(den.last_flags[0]), meta
        else:
            assert np.array_equal(served, raw) and meta["n2n-denoised"] is False
            assert meta["n2n-flags"] == [NO_MODEL_FLAG]
    assert any(not np.array_equal(served, raw) for raw, served, m, _ in got if m["channel"] == "GFP")
    kept = names.count(new)
    assert report.frames_kept_raw == sum(m["n2n-denoised"] is False for _, _, m, _ in got)
    assert status["no_model"] == ({} if default else {new: kept}) and status["history_resets"] == {}
    assert len([line for line in lines if f"'{new}'" in line]) == 1, lines


def test_the_bridge_keeps_every_frame_across_a_new_roi_in_files_of_one_size(
        scope: Any, models: dict[str, Path], dens: dict[str, Denoiser], tmp_path: Path) -> None:
    """core.setROI while the bridge runs, then core.clearROI: the frames of the ROI go to bridge_2.ome.tif (16 × 24),
    said in one line and listed in the report, and the full frames after it go on in bridge.ome.tif (a file per
    size, never one per change); every camera frame is in one of them (consecutive image numbers in all), each
    denoised frame the model's answer from the frames of its own size since the last change; two history resets,
    no error."""
    out = tmp_path / "bridge.ome.tif"
    files = [out, tmp_path / "bridge_2.ome.tif"]
    with said() as lines, running_server(models["DAPI"], lossless(), warmup_shape=(SIZE, SIZE)) as server:
        report = bridge_with_changes(scope, server.endpoints, out, [lambda: scope.setROI(*ROI), scope.clearROI])
        with StreamClient(server.endpoints) as client:
            status = client.status()

    assert report.files == [str(p) for p in files]
    shapes = [tifffile.imread(p).shape for p in files]
    assert [s[-3:] for s in shapes] == [(2, SIZE, SIZE), (2, ROI[3], ROI[2])]
    got = sorted(planes(report.files), key=lambda p: int(p[2]["ImageNumber"]))  # in the order the camera took them
    numbers = [m["ImageNumber"] for _, _, m, _ in got]
    assert numbers == list(range(numbers[0], numbers[0] + len(got)))
    assert len(got) == report.planes_written == report.frames_seen == report.frames_denoised + report.frames_kept_raw
    assert report.frames_failed == report.frames_unaccounted == 0
    history = Histories()
    for raw, served, meta, _ in got:
        assert np.array_equal(served, dens["DAPI"](raw, previous=history.advance("GFP", raw))), meta
        assert meta["n2n-denoised"] is not is_raw(dens["DAPI"].last_flags[0])
    assert sum(not np.array_equal(raw, served) for raw, served, _, _ in got) > len(got) // 2  # denoised, mostly
    assert status["history_resets"] == {"shape": 2} and status["errors"] == 0
    new = [line for line in lines if "came after" in line]
    assert len(new) == 1 and str(files[1]) in new[0], lines


def test_the_simulated_camera_takes_a_roi_from_the_next_frame(scope: Any) -> None:
    """core.setROI crops the sensor's frame (snap and sequence), refuses a ROI beyond the sensor in one line, and a
    new sensor size (Width) clears it."""
    scope.setROI(*ROI)
    scope.snapImage()
    assert scope.getImage().shape == (ROI[3], ROI[2]) and scope.getROI() == list(ROI)
    assert (scope.getImageWidth(), scope.getImageHeight()) == (ROI[2], ROI[3])
    with pytest.raises(Exception, match=r"expected a ROI within the 32x32 sensor .* got x=20, y=20, width=24"):
        scope.setROI(20, 20, 24, 16)
    scope.clearROI()
    scope.snapImage()
    assert scope.getImage().shape == (SIZE, SIZE)
    scope.setROI(*ROI)
    scope.setProperty("Camera", "Width", 40)
    assert scope.getROI() == [0, 0, 40, SIZE]


# --- n2n acquire: a useq sequence that changes the frame size --------------------------------------------------------
def test_an_acquisition_whose_position_sets_another_frame_size_keeps_every_frame(
        models: dict[str, Path], dens: dict[str, Denoiser], tmp_path: Path) -> None:
    """A useq sequence cannot change the ROI mid-run (its setup event's ROI holds for the whole run), but a position's
    properties can set a camera setting that changes the frame size (here the Width; a binning on a real camera).
    pymmcore-plus's writers hold one frame size per acquisition: those frames are kept, raw and denoised, in an
    OME-TIFF of their size beside the raw record (said once, counted, each plane's axes in its metadata), and the
    acquisition's own files skip them (the other positions whole and denoised); every acquired frame is in one or
    the other."""
    import useq
    import zarr

    from streamer.micromanager.core import open_core
    from streamer.micromanager.mda import acquire

    narrow = ROI[2]
    seq = useq.MDASequence(stage_positions=[{"x": 0, "y": 0},
                                            {"x": 0, "y": 0, "properties": [["Camera", "Width", str(narrow)]]},
                                            {"x": 0, "y": 0, "properties": [["Camera", "Width", str(SIZE)]]}],
                           time_plan={"interval": 0, "loops": 2})
    with open_core("sim") as core:
        core.setProperty("Camera", "Width", SIZE)
        core.setProperty("Camera", "Height", SIZE)
        with said() as lines, running_server(models["DAPI"], config(motion_threshold=None)) as server:
            report = acquire(core, seq, server.endpoints, tmp_path / "acq")

    side = tmp_path / "acq" / f"raw_{narrow}x{SIZE}.ome.tif"
    assert report.frames == 6 and report.raw_recorded == 4 and report.raw_record_errors == 0
    assert report.other_sizes == {str(side): 2} and report.denoised_frames + report.passed_raw == 6
    saved, meta = tifffile.imread(side), read_frame_metadata(side)
    assert saved.shape == (2, 2, SIZE, narrow)
    assert [m["Axes"] for m in meta] == [{"time": 0, "position": 1}, {"time": 1, "position": 1}]
    history = Histories()
    for (raw, served), m in zip(saved, meta):
        assert np.array_equal(served, dens["DAPI"](raw, previous=history.advance("p1", raw)))
        assert m["n2n"]["denoised"] is not is_raw(dens["DAPI"].last_flags[0])
    for p in (0, 2):
        raw = np.asarray(zarr.open_group(Path(report.raw) / str(p), mode="r")["0"])
        out = np.asarray(zarr.open_group(Path(report.denoised) / str(p), mode="r")["0"])
        assert raw.shape == out.shape == (2, SIZE, SIZE) and raw.min() > 0  # every frame there, acquired
        history = Histories()
        for t in range(2):
            assert np.array_equal(out[t], dens["DAPI"](raw[t], previous=history.advance("", raw[t]))), (p, t)
    assert len([line for line in lines if str(side) in line]) == 1, lines


@pytest.mark.parametrize("record", ["raw", "raw.ome.tif"])
def test_a_size_that_comes_back_goes_on_in_its_own_record(tmp_path: Path, record: str) -> None:
    """Sizes that alternate (a binned channel among others, a ROI switched back and forth) make one record per size,
    not one per change: six images of two alternating sizes give two records of three images each, said once."""
    from streamer.micromanager.rawrecord import open_record

    full, crop = camera_frames(3, seed=90), camera_frames(3, seed=91)[:, 8:40, 4:52]
    images = [np.ascontiguousarray(x) for pair in zip(full, crop) for x in pair]
    with said() as lines:
        raw = open_record(tmp_path / record)
        for t, image in enumerate(images):
            raw.save(image, {"Axes": {"time": t}})
        raw.close()
    stem, dot, suffix = record.partition(".")
    assert raw.paths == [tmp_path / record, tmp_path / f"{stem}_2{dot}{suffix}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in raw.paths)
    for path, times in zip(raw.paths, ([0, 2, 4], [1, 3, 5])):
        if record == "raw":
            with Dataset(str(path)) as ds:
                assert sorted(c["time"] for c in ds.get_image_coordinates_list()) == times
                assert all(np.array_equal(ds.read_image(time=t), images[t]) for t in times)
        else:
            assert [m["Axes"]["time"] for m in read_frame_metadata(path)] == times
            assert np.array_equal(tifffile.imread(path), np.stack([images[t] for t in times]))
    assert sum("came after" in line for line in lines) == 1, lines
