"""Micro-Manager on a real MMCore (pymmcore-plus UniMMCore) running the simulated camera written in
Python: the device, the frame source, `n2n grab` and the bridge (the pycromanager hook: test_mm_hook.py)."""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import REPO_ROOT
from waiting import GENEROUS_S, Finishing, wait_for

from streamer.endpoints import Endpoints
from streamer.micromanager import (
    SIM_CFG,
    MicroManagerUnavailable,
    SnakeCaseCore,
    close_core,
    load_core,
    open_source,
)
from streamer.micromanager.bridge import run_bridge
from streamer.micromanager.config import MicroManagerSourceConfig
from streamer.micromanager.grab import analyse_pairs, record
from streamer.server import ServeConfig, running_server
from streamer.sources import (
    EndOfStream,
    MicroManagerSource,
    SimulatedCamera,
    SimulatedCameraConfig,
    normalize_tagged_image,
    read_frame_metadata,
    read_stack,
)

LOCAL = Endpoints.local()
SIZE = 64


def serve_config(**overrides: Any) -> ServeConfig:
    return ServeConfig.model_validate({"num_threads": 1, "precision": "fp32", "endpoints": LOCAL, **overrides})


@pytest.fixture
def core() -> Iterator[SnakeCaseCore]:
    """The built-in simulated session at 64×64, 2 ms exposure; stopped, unloaded and collected after."""
    mmc = load_core("sim")
    mmc.setProperty("Camera", "Width", SIZE)
    mmc.setProperty("Camera", "Height", SIZE)
    mmc.setExposure(2.0)
    yield mmc
    close_core(mmc)
    del mmc
    gc.collect()


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    return trained_run["run"]


# --- the device and the core -----------------------------------------------------------------------------
def test_sim_cfg_file_is_the_built_in_session() -> None:
    """configs/micromanager/sim.cfg and the built-in 'sim' session are the same text."""
    assert (REPO_ROOT / "configs" / "micromanager" / "sim.cfg").read_text() == SIM_CFG


def test_cfg_file_loads_the_python_camera() -> None:
    """The shipped .cfg loads the simulated camera as Core-Camera with its properties."""
    mmc = load_core(REPO_ROOT / "configs" / "micromanager" / "sim.cfg")
    try:
        assert mmc.getCameraDevice() == "Camera"
        assert (mmc.getImageWidth(), mmc.getImageHeight(), mmc.getBytesPerPixel()) == (512, 512, 2)
        assert mmc.getExposure() == 10.0
        assert mmc.get_image_width() == 512  # the Java bridge's snake_case name
    finally:
        close_core(mmc)


def test_snake_case_names_map_to_core_calls(core: SnakeCaseCore) -> None:
    """snake_case calls reach the camelCase methods; unknown names raise AttributeError."""
    assert core.get_camera_device() == core.getCameraDevice() == "Camera"
    core.set_exposure(3.5)
    assert core.getExposure() == 3.5
    with pytest.raises(AttributeError, match="no_such_call"):
        core.no_such_call()


def test_bad_config_files_are_refused(tmp_path: Path) -> None:
    """A missing file, a broken line and a session without a camera each get a clear error."""
    with pytest.raises(MicroManagerUnavailable, match="not found"):
        load_core(tmp_path / "absent.cfg")
    broken = tmp_path / "broken.cfg"
    broken.write_text("#py pyDevice,Camera,streamer.micromanager.camera,NoSuchCamera\n")
    with pytest.raises(MicroManagerUnavailable, match=r"broken\.cfg"):
        load_core(broken)
    empty = tmp_path / "empty.cfg"
    empty.write_text("# nothing\n")
    with pytest.raises(MicroManagerUnavailable, match="no camera"):
        load_core(empty)


def test_camera_device_runs_the_simulated_camera_physics(core: SnakeCaseCore) -> None:
    """Frames through MMCore are exactly the simulated camera's frames for the same settings and seed."""
    reference = SimulatedCamera(SimulatedCameraConfig(height=SIZE, width=SIZE, exposure_ms=2.0))
    core.startSequenceAcquisition(3, 0, True)
    frames = []
    while len(frames) < 3:
        if core.getRemainingImageCount():
            frames.append(core.popNextImage())
    assert all(np.array_equal(f, reference.read().pixels) for f in frames)


def test_exposure_sets_the_signal(core: SnakeCaseCore) -> None:
    """Four times the exposure collects about four times the electrons above the offset."""
    def mean_signal(exposure: float) -> float:
        core.setExposure(exposure)
        core.snapImage()
        return float(core.getImage().mean()) - 100.0  # offset_adu

    low, high = mean_signal(2.0), mean_signal(8.0)
    assert high / low == pytest.approx(4.0, rel=0.05)


def test_gui_unavailable_names_the_fix(tmp_path: Path) -> None:
    """`n2n grab --gui` without a Micro-Manager GUI exits 2 with pycromanager's error and what to switch on
    (no traceback)."""
    import yaml

    mm = tmp_path / "mm.yaml"
    mm.write_text(yaml.safe_dump({"version": 1, "source": {"config_file": None, "port": 47991, "timeout_s": 1}}))
    proc = subprocess.run([sys.executable, "-m", "n2n", "grab", "--config", str(mm), "--out", str(tmp_path / "g.tif")],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "Couldn't create Core. Is Micro-Manager running" in err and "Run server on port 47991" in err
    assert "Traceback" not in proc.stderr and not (tmp_path / "g.tif").exists()


# --- the frame source ------------------------------------------------------------------------------------
def test_normalize_flat_java_image() -> None:
    """A flat int16 buffer with text Height/Width tags (the Java bridge) becomes 2-D uint16 with numeric tags."""
    pix = np.arange(12, dtype=np.int16) - 3
    img, meta = normalize_tagged_image(pix, {"Height": "3", "Width": "4", "ImageNumber": "7", "Exposure-ms": "2.5",
                                             "Camera": "Cam"}, np.dtype(np.uint16))
    assert img.shape == (3, 4) and img.dtype == np.uint16
    assert img[0, 0] == 65533  # same bits as int16 -3
    assert meta == {"Height": 3, "Width": 4, "ImageNumber": 7, "Exposure-ms": 2.5, "Camera": "Cam"}
    with pytest.raises(ValueError, match="Height × Width"):
        normalize_tagged_image(pix, {"Height": "5", "Width": "4"})


def test_source_reads_consecutive_frames_and_stops_its_acquisition(core: SnakeCaseCore) -> None:
    """The source starts its own acquisition at the first read, hands out consecutive frames, stops on close; the
    frames' capture times follow Micro-Manager's elapsed time however late they are read."""
    source = MicroManagerSource(core, exposure_ms=1.5)
    assert not core.isSequenceRunning() and source.shape == (SIZE, SIZE) and source.dtype == np.uint16
    frames = [source.read()]
    assert core.isSequenceRunning()
    # the other 19 are read late, all at once, after they have waited in Micro-Manager's buffer
    wait_for(lambda: core.getRemainingImageCount() >= 19, "19 frames in the circular buffer", timeout=GENEROUS_S)
    frames += [source.read() for _ in range(19)]
    read_ns = time.time_ns()
    source.close()
    assert not core.isSequenceRunning()
    assert [f.index for f in frames] == list(range(frames[0].index, frames[0].index + 20))
    assert all(f.pixels.shape == (SIZE, SIZE) and f.pixels.dtype == np.uint16 for f in frames)
    assert frames[0].metadata["Exposure-ms"] == 1.5 and frames[0].metadata["Camera"] == "Camera"
    assert source.missed == 0
    # capture times follow Micro-Manager's elapsed time (not when the frame happened to be read)
    for frame in frames[1:]:
        span_ms = (frame.timestamp_ns - frames[0].timestamp_ns) / 1e6
        elapsed_ms = frame.metadata["ElapsedTime-ms"] - frames[0].metadata["ElapsedTime-ms"]
        assert span_ms == pytest.approx(elapsed_ms, abs=0.5)
    assert frames[-1].timestamp_ns <= read_ns


def test_source_follows_a_running_live_stream(core: SnakeCaseCore) -> None:
    """When Micro-Manager is already streaming, the source follows it, keeps it running on close, and ends
    with EndOfStream when the user stops it."""
    core.startContinuousSequenceAcquisition(0)
    source = MicroManagerSource(core, exposure_ms=5.0)
    assert source.following and core.getExposure() == 2.0  # the live exposure is not changed
    source.read()
    source.close()
    assert core.isSequenceRunning()
    follower = MicroManagerSource(core)
    core.stopSequenceAcquisition()
    with pytest.raises(EndOfStream):
        for _ in range(10_000):
            follower.read()


def test_source_times_out_with_a_clear_error(core: SnakeCaseCore) -> None:
    """A camera that delivers nothing in time raises a TimeoutError naming the camera."""
    core.setExposure(2000.0)  # one frame every 2 s
    source = MicroManagerSource(core, timeout_s=0.3)
    try:
        source.read()  # the first frame comes at once
        with pytest.raises(TimeoutError, match=r"no frame from Micro-Manager camera 'Camera' within 0\.3 s"):
            source.read()
    finally:
        source.close()


def test_source_counts_frames_micromanager_overwrote(core: SnakeCaseCore) -> None:
    """A reader slower than the camera with a tiny circular buffer: the skipped image numbers are counted."""
    core.setProperty("Camera", "Width", 512)
    core.setProperty("Camera", "Height", 512)  # 0.5 MB per frame: a 1 MB buffer holds two
    core.setProperty("Camera", "ReplayFrames", 4)
    core.setExposure(1.0)
    core.setCircularBufferMemoryFootprint(1)
    source = MicroManagerSource(core)

    def newest() -> int:  # the image number the camera put in the buffer last (-1: none there)
        try:
            return int(dict(core.getLastImageAndMD()[1])["ImageNumber"])
        except IndexError:
            return -1

    try:
        numbers = []
        for _ in range(6):
            numbers.append(source.read().index)
            # the camera gets 4 frames ahead of the reader: a buffer of two has overwritten some
            wait_for(lambda: newest() >= numbers[-1] + 4, "the camera to get 4 frames ahead", timeout=GENEROUS_S)
    finally:
        source.close()
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(numbers))
    assert gaps > 0 and source.missed == gaps


# --- grab -------------------------------------------------------------------------------------------------
def test_grab_200_consecutive_frames(core: SnakeCaseCore, tmp_path: Path) -> None:
    """200 frames on disk, strictly consecutive image numbers, each frame's metadata kept; then readable for
    training as a (200, H, W) stack."""
    out = tmp_path / "pairs.ome.tif"
    done: list[int] = []
    source = MicroManagerSource(core)
    try:
        report = record(source, 200, out, progress=lambda n, total: done.append(n))
    finally:
        source.close()

    meta = read_frame_metadata(out)
    numbers = [m["ImageNumber"] for m in meta]
    assert report.frames == 200 and report.consecutive and report.missed == 0 and done[-1] == 200
    assert numbers == list(range(numbers[0], numbers[0] + 200))
    assert all(m["Exposure-ms"] == 2.0 and m["Camera"] == "Camera" for m in meta)
    elapsed = [m["ElapsedTime-ms"] for m in meta]
    assert all(b > a for a, b in itertools.pairwise(elapsed))
    stack = read_stack(out)
    assert stack.shape == (200, SIZE, SIZE) and stack.dtype == np.uint16
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.series[0].axes == "TYX"
    clean = analyse_pairs(out, 65535.0)
    assert clean["warnings"] == [] and len(clean["correlation"]) == 199
    assert max(clean["shift_px"]) < 0.5


def test_grab_warns_on_motion_and_saturation(core: SnakeCaseCore, tmp_path: Path) -> None:
    """A drifting sample and an overexposed one each get the warning that explains the problem."""
    core.setProperty("Camera", "Width", 128)
    core.setProperty("Camera", "Height", 128)
    core.setProperty("Camera", "DriftXPixelsPerFrame", 2.0)
    source = MicroManagerSource(core, exposure_ms=10.0)
    try:
        record(source, 6, tmp_path / "drift.ome.tif")
    finally:
        source.close()
    drift = analyse_pairs(tmp_path / "drift.ome.tif", 65535.0)
    assert float(np.median(drift["shift_px"])) > 1.2  # 2 px per frame, read low near the frame's edges
    assert any("moved by more than 0.5 px" in w for w in drift["warnings"])

    core.setProperty("Camera", "DriftXPixelsPerFrame", 0.0)
    core.setProperty("Camera", "PeakPhotonRate", 5e7)
    source = MicroManagerSource(core)
    try:
        record(source, 4, tmp_path / "bright.ome.tif")
    finally:
        source.close()
    bright = analyse_pairs(tmp_path / "bright.ome.tif", 65535.0)
    assert max(bright["saturated_fraction"]) > 0.001
    assert any("saturated pixels" in w for w in bright["warnings"])


def test_grab_command_then_train(tmp_path: Path, tiny_config_dict: Any) -> None:
    """`n2n grab` (a real process on the built-in session) writes frames that `n2n train` takes unchanged."""
    import yaml

    mm = tmp_path / "mm.yaml"
    mm.write_text(yaml.safe_dump({"version": 1, "source": {"config_file": "sim", "exposure_ms": 2.0}}))
    cfg_file = tmp_path / "sim64.cfg"
    cfg_file.write_text(SIM_CFG.replace("Width,512", f"Width,{SIZE}").replace("Height,512", f"Height,{SIZE}"))
    out = tmp_path / "grab.ome.tif"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "n2n", "grab", "--config", str(mm), "--mm-config", str(cfg_file),
                           "--frames", "12", "--out", str(out), "--json", str(tmp_path / "grab.json")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "grab.json").read_text())
    assert report["frames"] == 12 and report["consecutive"] and report["warnings"] == []
    assert "image numbers 0…11 consecutive" in proc.stdout
    first = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else proc.stdout.splitlines()[0]
    assert "SIMULATED camera" in first  # synthetic cells are never passed off as a microscope's
    assert all(m.get("n2n-simulated") is True for m in read_frame_metadata(out))

    train_yaml = tmp_path / "train.yaml"
    train = tiny_config_dict()
    train["data"] = {k: v for k, v in train["data"].items() if k not in ("frames", "camera")}
    train_yaml.write_text(yaml.safe_dump(train))
    proc = subprocess.run([sys.executable, "-m", "n2n", "train", "--config", str(train_yaml), "--data", str(out),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["training"]["data"]["source"] == "files"


# --- bridge -----------------------------------------------------------------------------------------------
def test_bridge_lossless_delivers_every_frame(core: SnakeCaseCore, run: Path, tmp_path: Path) -> None:
    """Lossless: every frame from Micro-Manager comes back denoised and is saved beside its raw frame."""
    out = tmp_path / "bridge.ome.tif"
    with running_server(run, serve_config(mode="lossless"), warmup_shape=(SIZE, SIZE)) as server:
        source = MicroManagerSource(core)
        try:
            report = run_bridge(source, server.endpoints, frames=40, out=out)
        finally:
            source.close()
        saved = tifffile.imread(out)
        expected = [server.denoiser(raw) for raw in saved[:, 0]]

    assert report.frames_seen == report.frames_denoised == 40 and report.frames_dropped == 0
    assert report.mode == "lossless" and report.missed_in_micromanager == 0
    assert saved.shape == (40, 2, SIZE, SIZE) and saved.dtype == np.uint16
    assert all(np.array_equal(saved[i, 1], expected[i]) for i in range(40))
    numbers = [m["ImageNumber"] for m in read_frame_metadata(out)]
    assert numbers == list(range(numbers[0], numbers[0] + 40))
    assert report.latency_ms_p50 is not None and report.latency_ms_p99 >= report.latency_ms_p50 > 0


def test_bridge_live_accounts_for_every_frame(core: SnakeCaseCore, run: Path, tmp_path: Path) -> None:
    """Live mode: every frame seen was either denoised or counted as dropped by the server, and the raw record keeps
    every camera frame (consecutive image numbers), each plane saying whether it was denoised as the counts do."""
    core.setExposure(1.0)
    out = tmp_path / "live.ome.tif"
    with running_server(run, serve_config(mode="live"), warmup_shape=(SIZE, SIZE)) as server:
        source = MicroManagerSource(core)
        try:
            report = run_bridge(source, server.endpoints, frames=60, out=out)
        finally:
            source.close()
    assert report.frames_seen == 60 and report.frames_denoised >= 1
    assert report.frames_denoised + report.frames_kept_raw + report.frames_dropped == 60
    saved, meta = tifffile.imread(out), read_frame_metadata(out)
    numbers = [m["ImageNumber"] for m in meta]
    assert saved.shape[0] == report.planes_written == 60 == len(meta)
    assert numbers == list(range(numbers[0], numbers[0] + 60))
    assert sum(m["n2n-denoised"] for m in meta) == report.frames_denoised
    raw_only = [i for i, m in enumerate(meta) if "n2n-raw-only" in m]
    assert len(raw_only) == report.frames_dropped
    assert all(np.array_equal(saved[i, 0], saved[i, 1]) for i in raw_only)


def test_bridge_stops_in_bounded_time_and_accounts_for_every_frame(core: SnakeCaseCore, run: Path,
                                                                    tmp_path: Path) -> None:
    """An open-ended lossless bridge asked to stop once 10 frames are through returns (waited for, with a generous
    bound: it would run forever otherwise); every frame it sent is counted (denoised, dropped, refused or
    unaccounted) and the recording is valid."""
    stop = threading.Event()
    with running_server(run, serve_config(mode="lossless"), warmup_shape=(SIZE, SIZE)) as server:
        source = MicroManagerSource(core)
        denoised: list[int] = []
        try:  # open-ended: only the stop ends it
            bridge = Finishing("the bridge, asked to stop,", run_bridge, source, server.endpoints, frames=None,
                               out=tmp_path / "b.ome.tif", timeout_s=5, stop=stop,
                               progress=lambda r: denoised.append(r.frames_denoised))
            wait_for(lambda: bool(denoised) and denoised[-1] >= 10, "10 frames bridged", timeout=GENEROUS_S)
            stop.set()
            report = bridge.result()
        finally:
            stop.set()
            source.close()
    assert report.interrupted and report.frames_seen > 0
    assert report.frames_seen == (report.frames_denoised + report.frames_kept_raw + report.frames_dropped
                                  + report.frames_failed + report.frames_unaccounted)
    assert tifffile.imread(tmp_path / "b.ome.tif").shape[0] == report.planes_written
    assert report.planes_written >= report.frames_seen  # every frame read is kept raw (one more if read, not sent)


def test_bridge_saves_float_output_in_the_camera_dtype(core: SnakeCaseCore, run: Path, tmp_path: Path) -> None:
    """A server sending float32 frames: the denoised channel is clipped and rounded into uint16, not wrapped."""
    with running_server(run, serve_config(mode="lossless", output_dtype="float32"),
                        warmup_shape=(SIZE, SIZE)) as server:
        source = MicroManagerSource(core)
        try:
            run_bridge(source, server.endpoints, frames=5, out=tmp_path / "f.ome.tif")
        finally:
            source.close()
        saved = tifffile.imread(tmp_path / "f.ome.tif")
        expected = [np.clip(np.rint(server.denoiser(raw)), 0, 65535).astype(np.uint16) for raw in saved[:, 0]]
    assert saved.dtype == np.uint16 and all(np.array_equal(saved[i, 1], expected[i]) for i in range(5))


def test_open_source_shuts_down_its_core(tmp_path: Path) -> None:
    """open_source on a config file yields a working source and releases the core afterwards."""
    cfg = tmp_path / "s.cfg"
    cfg.write_text(SIM_CFG.replace("Exposure,10.0", "Exposure,1.0"))
    with open_source(MicroManagerSourceConfig(config_file=cfg.name), base_dir=tmp_path) as source:
        assert source.read().pixels.shape == (512, 512)
        mmc = source.core
    assert list(mmc.getLoadedDevices()) == ["Core"] and source.core is None
    del mmc


def test_shipped_yaml_finds_its_cfg_file() -> None:
    """configs/micromanager.yaml names micromanager/sim.cfg relative to itself, and it opens."""
    from streamer.core.config import load_config
    from streamer.micromanager import resolve_config_file
    from streamer.micromanager.config import MicroManagerConfig

    path = REPO_ROOT / "configs" / "micromanager.yaml"
    cfg = load_config(MicroManagerConfig, path)
    assert resolve_config_file(cfg.source.config_file, path.parent) == str(path.parent / "micromanager" / "sim.cfg")
    with open_source(cfg.source, path.parent) as source:
        assert source.camera == "Camera" and source.exposure_ms == 10.0


def test_bridge_command(run: Path, tmp_path: Path) -> None:
    """`n2n bridge` (a real process): Micro-Manager → its own server (lossless) → OME-TIFF, counts reported."""
    import yaml

    cfg_file = tmp_path / "sim64.cfg"
    cfg_file.write_text(SIM_CFG.replace("Width,512", f"Width,{SIZE}").replace("Height,512", f"Height,{SIZE}")
                        .replace("Exposure,10.0", "Exposure,2.0"))
    mm = tmp_path / "mm.yaml"
    mm.write_text(yaml.safe_dump({"version": 1, "source": {"config_file": str(cfg_file)},
                                  "bridge": {"model": str(run), "frames": 25, "out": str(tmp_path / "b.ome.tif")},
                                  "serve": {"mode": "lossless", "num_threads": 1, "precision": "fp32",
                                            "endpoints": LOCAL.model_dump()}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "n2n", "bridge", "--config", str(mm), "--json",
                           str(tmp_path / "b.json")], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["frames_seen"] == report["frames_denoised"] == 25 and report["frames_dropped"] == 0
    assert tifffile.imread(tmp_path / "b.ome.tif").shape == (25, 2, SIZE, SIZE)
    assert "frames seen" in proc.stdout and "lossless" in proc.stdout


def test_bridge_command_runs_until_ctrl_c(run: Path, tmp_path: Path) -> None:
    """`n2n bridge --frames 0` runs until Ctrl-C, then finishes cleanly: exit 0, counts printed, file valid."""
    import yaml

    cfg_file = tmp_path / "sim64.cfg"
    cfg_file.write_text(SIM_CFG.replace("Width,512", f"Width,{SIZE}").replace("Height,512", f"Height,{SIZE}"))
    mm = tmp_path / "mm.yaml"
    mm.write_text(yaml.safe_dump({"version": 1, "source": {"config_file": str(cfg_file), "timeout_s": 5},
                                  "bridge": {"model": str(run), "out": str(tmp_path / "b.ome.tif")},
                                  "serve": {"mode": "live", "num_threads": 1, "precision": "fp32",
                                            "endpoints": LOCAL.model_dump()}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "n2n", "bridge", "--config", str(mm), "--frames", "0", "--json",
                             str(tmp_path / "b.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "b.ome.tif").exists():  # frames are flowing once the recording exists
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["interrupted"] and report["frames_seen"] > 0
    assert report["frames_seen"] == (report["frames_denoised"] + report["frames_dropped"] + report["frames_failed"]
                                     + report["frames_unaccounted"])
    # every frame seen is in the record: a frame live mode dropped is kept raw (both channels), so under load the
    # file holds more frames than were denoised
    assert tifffile.imread(tmp_path / "b.ome.tif").shape[0] == report["planes_written"] == report["frames_seen"]
    assert "frames seen" in stdout
