"""Issue 32: `n2n grab --mda` records a Noise2Noise burst at each place (position, grid, channel, z) of a useq-schema
sequence, on the real UniMMCore with the simulated microscope run by pymmcore-plus's own runner: one OME-TIFF
(T, C, Y, X) per (position, grid, z) that `n2n train --per-channel` and `--channel NAME` take, a report per stream,
and valid files when the run is stopped or interrupted."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import useq
import yaml
from conftest import tiny_train_dict

from streamer.core.streams import key_text, stream_key
from streamer.micromanager import grab_mda
from streamer.micromanager.core import SIM_CFG, open_core
from streamer.micromanager.grab_mda import (
    INCOMPLETE,
    SPOOL,
    AssemblyError,
    BurstsReport,
    analyse_bursts,
    burst_sequence,
    plan_bursts,
    plan_grab,
    record_bursts,
)
from streamer.micromanager.microscope import microscope_of
from streamer.sources import OmeTiffWriter, read_stack
from streamer.sources.tiff import read_frame_metadata, stack_channels

SIZE = 64
FRAMES = 6
EXPOSURE_MS = {"DAPI": 20.0, "GFP": 10.0}
POSITIONS = [(30.0, 30.0), (200.0, 0.0)]  # fields with nuclei (DAPI) and cytoskeleton (GFP) in view
PLANES = [0.0, 3.0]  # in focus, and 3 µm off (blurred)


def sequence() -> useq.MDASequence:
    """2 channels × 2 positions × 2 planes, with a time plan of its own (ignored by the grab)."""
    return useq.MDASequence(
        channels=[{"config": c, "exposure": e} for c, e in EXPOSURE_MS.items()],
        stage_positions=[(x, y, 0.0) for x, y in POSITIONS], z_plan={"absolute": PLANES},
        time_plan={"interval": 1.0, "loops": 3}, axis_order="tpgcz")


@pytest.fixture
def small_core() -> Iterator[Any]:
    """The built-in simulated microscope at 64²; the core stopped, unloaded and released after."""
    with open_core("sim") as core:
        core.setProperty("Camera", "Width", SIZE)
        core.setProperty("Camera", "Height", SIZE)
        yield core


@pytest.fixture(scope="module")
def grabbed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One grab of the sequence (6 frames at each of its 8 places) and each (channel, position, plane)'s truth."""
    out = tmp_path_factory.mktemp("grab") / "cells.ome.tif"
    done: list[int] = []
    with open_core("sim") as core:
        core.setProperty("Camera", "Width", SIZE)
        core.setProperty("Camera", "Height", SIZE)
        plan = plan_grab(core, sequence(), FRAMES, out)
        report = record_bursts(core, plan, progress=lambda n, total: done.append(n))
        scope = microscope_of(core)
        truths = {(c, p, z): scope.expected(c, POSITIONS[p], PLANES[z], EXPOSURE_MS[c])
                  for c in EXPOSURE_MS for p in range(2) for z in range(2)}
    analyse_bursts(report)
    return {"out": out, "report": report, "truths": truths, "progress": done, "plan": plan}


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_a_file_per_position_and_plane_holds_each_channel_in_order(grabbed: dict[str, Any]) -> None:
    """One OME-TIFF per (position, z), named by its place, axes TCYX with the channels DAPI, GFP in the sequence's
    order; every frame planned was recorded, the spool removed, and the files within the size planned."""
    report: BurstsReport = grabbed["report"]
    folder = grabbed["out"].parent
    names = [f"cells_p{p:03d}_z{z:03d}.ome.tif" for p in range(2) for z in range(2)]
    assert [Path(f).name for f in report.files] == names
    assert sorted(p.name for p in folder.iterdir()) == names  # no spool, nothing incomplete
    assert (report.frames, report.frames_planned, report.stopped) == (8 * FRAMES, 8 * FRAMES, False)
    assert grabbed["progress"] == list(range(1, 8 * FRAMES + 1))
    assert report.missing == [] and report.streams_planned == 8 and not report.short
    plan = grabbed["plan"]
    sizes = sum(Path(f).stat().st_size for f in report.files)
    assert 8 * FRAMES * SIZE * SIZE * 2 < sizes <= plan.bytes_planned < plan.bytes_needed
    for f in report.files:
        with tifffile.TiffFile(f) as tif:
            assert tif.is_ome and tif.series[0].axes == "TCYX"
            assert tif.series[0].shape == (FRAMES, 2, SIZE, SIZE) and tif.series[0].dtype == np.uint16
        assert stack_channels(f) == ["DAPI", "GFP"]


def test_each_burst_is_consecutive_frames_of_its_channel_at_its_place(grabbed: dict[str, Any]) -> None:
    """Each channel's burst in a file: consecutive image numbers, frames of that channel, stage position and plane
    (its metadata), independent noise, and its mean the truth of that (channel, position, plane): DAPI and GFP
    differ, the plane 3 µm off focus is the blurred one."""
    truths = grabbed["truths"]
    for f in grabbed["report"].files:
        p, z = (int(v) for v in re.fullmatch(r"cells_p(\d+)_z(\d+)\.ome\.tif", Path(f).name).groups())  # type: ignore[union-attr]
        meta = read_frame_metadata(f)
        assert len(meta) == FRAMES
        for channel in EXPOSURE_MS:
            frames = read_stack(f, channel=channel, min_frames=2, allow_2d=False, ome_z_as_time=False)  # as train
            assert frames.shape == (FRAMES, SIZE, SIZE)
            own = [m["channels"][channel] for m in meta]
            assert [m["ImageNumber"] for m in own] == list(range(own[0]["ImageNumber"], own[0]["ImageNumber"] + FRAMES))
            assert {m["SimulatorChannel"] for m in own} == {channel}
            assert {(float(m["SimulatorXUm"]), float(m["SimulatorYUm"]), float(m["SimulatorZUm"])) for m in own} \
                == {(*POSITIONS[p], PLANES[z])}
            assert {m["Exposure-ms"] for m in own} == {EXPOSURE_MS[channel]}
            assert not np.array_equal(frames[0], frames[1])
            mean = frames.astype(np.float64).mean(axis=0)
            truth = truths[(channel, p, z)]
            other = truths[("GFP" if channel == "DAPI" else "DAPI", p, z)]
            assert np.abs(mean - truth).mean() < np.abs(mean - other).mean(), (f, channel)
            assert abs(float(mean.mean() - truth.mean())) < 1.0, (f, channel)
            assert corr(mean, truth) > 0.8, (f, channel)
        gfp = read_stack(f, channel=1).astype(np.float64).mean(axis=0)  # by index too; the blur tells the planes
        scores = {zz: corr(gfp, truths[("GFP", p, zz)]) for zz in range(2)}
        assert max(scores, key=lambda k: scores[k]) == z, (f, scores)


def test_the_report_has_one_entry_per_stream_keyed_by_its_text(grabbed: dict[str, Any]) -> None:
    """A stream per (position, channel, z), keyed as every other path keys it (streamer.core.streams), with its
    frames, file and channel index, saturation per frame and correlation and shift per pair; JSON-ready."""
    report: BurstsReport = grabbed["report"]
    expected = {key_text(stream_key({"position": p, "z": z}, c)) for c in EXPOSURE_MS for p in range(2)
                for z in range(2)}
    assert set(report.streams) == expected
    for text, burst in report.streams.items():
        assert burst.stream == text and burst.frames == FRAMES and burst.complete and burst.consecutive
        assert burst.channel_index == list(EXPOSURE_MS).index(burst.channel)
        assert burst.exposure_ms == EXPOSURE_MS[burst.channel]
        assert len(burst.saturated_fraction) == FRAMES and max(burst.saturated_fraction) == 0.0
        assert len(burst.correlation) == len(burst.shift_px) == FRAMES - 1
        assert not any("saturated" in w for w in burst.warnings)
    assert json.loads(json.dumps(report.to_dict()))["streams"].keys() == expected


def test_n2n_train_per_channel_takes_the_files(grabbed: dict[str, Any], tmp_path: Path) -> None:
    """`n2n train --per-channel --data FILES` trains a model per channel on the grab's files as they are and
    writes the model set."""
    from streamer.core.modelset import ModelSet

    cfg = tmp_path / "tiny.yaml"
    train = tiny_train_dict(quantize={"int8": False})
    train["data"] = {k: v for k, v in train["data"].items() if k not in ("frames", "camera")}
    cfg.write_text(yaml.safe_dump(train))
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, "-m", "n2n", "train", "--config", str(cfg), "--per-channel", "--data",
                           *grabbed["report"].files, "--out", str(out), "--set", "optim.epochs=1", "--set",
                           "optim.steps_per_epoch=2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    models = ModelSet.load(out / "models.yaml")
    assert set(models.channels) == {"DAPI", "GFP"}
    for name in ("DAPI", "GFP"):
        card = json.loads((out / name / "model.json").read_text())
        assert card["training"]["config"]["data"]["channel"] == name
        assert len(card["training"]["data"]["data"]) == 4  # every (position, plane) file


def test_a_stop_mid_burst_leaves_valid_files_and_the_cut_burst_alone(small_core: Any, tmp_path: Path) -> None:
    """Stopped two frames into the second burst (the sequence's order, channel before z: DAPI at plane 0, DAPI at
    plane 1, …): plane 0's file holds its complete DAPI burst, the cut burst is kept alone in incomplete/ (a valid
    single-channel stack), nothing else is written, and the report says so."""
    import threading

    stop = threading.Event()

    def progress(done: int, _total: int) -> None:
        if done == FRAMES + 2:
            stop.set()

    plan = plan_grab(small_core, sequence(), FRAMES, tmp_path / "run")
    report = record_bursts(small_core, plan, progress=progress, stop=stop)
    analyse_bursts(report)
    assert report.stopped and [Path(f).name for f in report.files] == ["p000_z000.ome.tif"]
    dapi = read_stack(report.files[0], min_frames=2, allow_2d=False, ome_z_as_time=False)
    assert dapi.shape == (FRAMES, SIZE, SIZE)
    assert {m["channels"]["DAPI"]["SimulatorZUm"] for m in read_frame_metadata(report.files[0])} == {"0.0000"}
    cut = [Path(f) for f in report.incomplete]
    assert [p.name for p in cut] == ["p000_z001_DAPI.ome.tif"] and cut[0].parent.name == INCOMPLETE
    rest = read_stack(cut[0], allow_2d=False)
    assert 2 <= len(rest) < FRAMES
    assert {(m["SimulatorChannel"], m["SimulatorZUm"]) for m in read_frame_metadata(cut[0])} == {("DAPI", "3.0000")}
    assert report.frames == FRAMES + len(rest) and not (tmp_path / "run" / SPOOL).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [INCOMPLETE, "p000_z000.ome.tif"]
    burst = report.streams[key_text(stream_key({"position": 0, "z": 1}, "DAPI"))]
    assert not burst.complete and burst.frames == len(rest) and "cut short" in burst.warnings[0]
    assert len(report.streams) == 2


def test_an_interruption_inside_a_burst_leaves_valid_files_and_is_raised(small_core: Any, tmp_path: Path) -> None:
    """A Ctrl-C (KeyboardInterrupt) three frames into the third burst (GFP at plane 0): raised after the files are
    closed, plane 0's file with its DAPI burst, plane 1's with its own, the cut GFP burst alone, the camera
    stopped."""
    def progress(done: int, _total: int) -> None:
        if done == 2 * FRAMES + 3:
            raise KeyboardInterrupt

    plan = plan_grab(small_core, sequence(), FRAMES, tmp_path / "run" / "x.ome.tif")
    with pytest.raises(KeyboardInterrupt):
        record_bursts(small_core, plan, progress=progress)
    assert not small_core.isSequenceRunning()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["x_incomplete", "x_p000_z000.ome.tif", "x_p000_z001.ome.tif"]
    for z, name in enumerate(("x_p000_z000.ome.tif", "x_p000_z001.ome.tif")):
        assert read_stack(run / name, allow_2d=False).shape == (FRAMES, SIZE, SIZE)
        assert {m["channels"]["DAPI"]["SimulatorZUm"] for m in read_frame_metadata(run / name)} == {
            f"{PLANES[z]:.4f}"}
    cut = run / "x_incomplete" / "x_p000_z000_GFP.ome.tif"
    assert read_stack(cut, allow_2d=False).shape == (3, SIZE, SIZE)


def two_planes() -> useq.MDASequence:
    """DAPI and GFP at one position, 2 planes: places p000_z000 (bursts 0 and 2) and p000_z001 (bursts 1 and 3)."""
    return useq.MDASequence(channels=["DAPI", "GFP"], stage_positions=[(30.0, 30.0, 0.0)],
                            z_plan={"absolute": PLANES}, axis_order="tpgcz")


_SIGINT_WHILE_ASSEMBLING = """
import json, logging, signal, sys
from pathlib import Path
import useq
from streamer.micromanager import grab_mda
from streamer.micromanager.core import open_core
from streamer.micromanager.grab_mda import plan_grab, record_bursts
from streamer.sources.tiff import read_frame_metadata, stack_channels

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
out = Path(sys.argv[1])
real = grab_mda._interleave
calls = []

def interrupted(path, *args):
    calls.append(str(path))
    if len(calls) == 1:
        signal.raise_signal(signal.SIGINT)
    real(path, *args)

grab_mda._interleave = interrupted
sequence = useq.MDASequence(channels=["DAPI", "GFP"], stage_positions=[(30.0, 30.0, 0.0)],
                            z_plan={"absolute": json.loads(sys.argv[2])}, axis_order="tpgcz")
with open_core("sim") as core:
    core.setProperty("Camera", "Width", int(sys.argv[3]))
    core.setProperty("Camera", "Height", int(sys.argv[3]))
    try:
        report = record_bursts(core, plan_grab(core, sequence, 3, out / "cells.ome.tif"))
        interrupted_by = None
    except KeyboardInterrupt:
        report, interrupted_by = None, "KeyboardInterrupt"
print(json.dumps({"calls": len(calls), "interrupted": interrupted_by,
                  "files": sorted(p.name for p in out.iterdir()),
                  "channels": [stack_channels(f) for f in report.files] if report else [],
                  "frames": [len(read_frame_metadata(f)) for f in report.files] if report else [],
                  "handler_restored": signal.getsignal(signal.SIGINT) is signal.default_int_handler}))
"""


def test_a_ctrl_c_while_the_files_are_assembled_waits_for_them(tmp_path: Path) -> None:
    """A Ctrl-C (SIGINT) that comes while the first file is assembled is logged and waited out: every file is
    written whole, the spool removed, and Ctrl-C is as it was after. (In a process of its own: a real SIGINT.)"""
    done = subprocess.run([sys.executable, "-c", _SIGINT_WHILE_ASSEMBLING, str(tmp_path), json.dumps(PLANES),
                           str(SIZE)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["interrupted"] is None, "a Ctrl-C while the files were assembled interrupted them"
    assert result["calls"] == 2 and "SIGINT received while the files are assembled" in done.stderr
    assert result["files"] == ["cells_p000_z000.ome.tif", "cells_p000_z001.ome.tif"]
    assert result["channels"] == [["DAPI", "GFP"]] * 2 and result["frames"] == [3, 3]
    assert result["handler_restored"]


def test_a_failure_while_assembling_keeps_the_rest_in_the_spool_and_says_so(small_core: Any, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while the second place's file is written: no file of that name is left (no truncated file that
    looks whole, no temporary one), the first place's file is whole and its bursts gone from the spool (each place's
    spools are removed once its file is written), the second place's bursts are kept there, and the error names the
    spool and what to do; a grab into the same --out is then refused naming the spool."""
    real_interleave, real_write = grab_mda._interleave, OmeTiffWriter.write
    written: list[int] = []

    def full_disk(self: OmeTiffWriter, planes: Any, metadata: Any = None) -> None:
        written.append(1)
        if len(written) > 1:
            raise OSError(28, "No space left on device")
        real_write(self, planes, metadata)

    def second_fails(path: Path, *args: Any) -> None:
        if path.name == "cells_p000_z001.ome.tif":
            assert sorted(p.name for p in plan.spool.iterdir()) == ["0001_DAPI.ome.tif", "0003_GFP.ome.tif"]
            monkeypatch.setattr(OmeTiffWriter, "write", full_disk)
        real_interleave(path, *args)

    monkeypatch.setattr(grab_mda, "_interleave", second_fails)
    plan = plan_grab(small_core, two_planes(), 3, tmp_path / "cells.ome.tif")
    with pytest.raises(AssemblyError) as raised:
        record_bursts(small_core, plan)
    monkeypatch.setattr(OmeTiffWriter, "write", real_write)
    message = str(raised.value)
    assert "\n" not in message and "cells_p000_z001.ome.tif: could not be assembled" in message
    assert "No space left on device" in message and "1 of 2 file(s) were written whole" in message
    assert f"the 2 burst(s) not assembled are kept in {plan.spool}" in message and "a new --out" in message
    assert plan.spool.name == ".cells.n2n-grab-spool"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cells.n2n-grab-spool", "cells_p000_z000.ome.tif"]
    assert stack_channels(tmp_path / "cells_p000_z000.ome.tif") == ["DAPI", "GFP"]
    assert sorted(p.name for p in plan.spool.iterdir()) == ["0001_DAPI.ome.tif", "0003_GFP.ome.tif"]
    for kept in plan.spool.iterdir():
        assert read_stack(kept, allow_2d=False).shape == (3, SIZE, SIZE)
    with pytest.raises(FileExistsError, match=r"\.cells\.n2n-grab-spool exists: an earlier grab into this --out "
                                              r"stopped before its files were assembled"):
        plan_grab(small_core, two_planes(), 3, tmp_path / "cells.ome.tif")


def test_the_disk_is_checked_for_room_before_anything_moves(small_core: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan says what the grab takes on disk: the files (every frame's pixels and metadata), and at most
    that plus the largest place's file while it is assembled, with a margin; a disk with less free is refused in
    one line naming both, nothing made (the folder is not there yet: the disk above it is asked)."""
    import shutil

    plan = plan_grab(small_core, sequence(), 4, tmp_path / "a")
    frame = SIZE * SIZE * 2
    assert plan.frames_planned == 32 and plan.frame_bytes > frame
    assert plan.bytes_planned == 32 * plan.frame_bytes
    assert plan.bytes_needed > plan.bytes_planned + 2 * 4 * plan.frame_bytes
    asked: list[Path] = []
    real = shutil.disk_usage

    def nearly_full(path: Any) -> Any:
        asked.append(Path(path))
        return real(path)._replace(free=plan.bytes_needed - 1)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    with pytest.raises(OSError, match=r"expected [\d.]+ MB free for the grab \(32 frames, [\d.]+ kB of files.*\), "
                                      r"got [\d.]+ MB free: free some, or grab fewer frames per burst"):
        plan_grab(small_core, sequence(), 4, tmp_path / "new" / "b.ome.tif")
    assert asked == [tmp_path] and not (tmp_path / "new").exists()


def test_a_channel_named_twice_is_refused_naming_it(small_core: Any, tmp_path: Path) -> None:
    """GFP at 10 ms and at 100 ms in one sequence would be one stream (a stream is keyed by its channel's name):
    refused in one line naming the channel and its exposures, before anything moves."""
    twice = useq.MDASequence(channels=[{"config": "DAPI"}, {"config": "GFP", "exposure": 10},
                                       {"config": "GFP", "exposure": 100}])
    with pytest.raises(ValueError, match=r"^channels: expected each channel once .*, got 'GFP' at 10 ms, 100 ms: "
                                         r"keep one of each"):
        plan_grab(small_core, twice, 4, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_another_prefix_in_the_same_folder_is_another_grab(small_core: Any, tmp_path: Path) -> None:
    """A grab stopped mid-burst keeps its cut burst in PREFIX_incomplete/: another prefix in the same folder is
    planned as usual, and the same prefix is refused naming that folder."""
    import threading

    stop = threading.Event()

    def progress(done: int, _total: int) -> None:
        if done == 2:
            stop.set()

    report = record_bursts(small_core, plan_grab(small_core, two_planes(), 3, tmp_path / "a.ome.tif"),
                           progress=progress, stop=stop)
    assert report.stopped and [Path(f).parent.name for f in report.incomplete] == ["a_incomplete"]
    plan = plan_grab(small_core, two_planes(), 3, tmp_path / "b.ome.tif")
    assert plan.incomplete == tmp_path / "b_incomplete" and plan.spool == tmp_path / ".b.n2n-grab-spool"
    with pytest.raises(FileExistsError, match=r"a_incomplete exists: expected a new --out"):
        plan_grab(small_core, two_planes(), 3, tmp_path / "a.ome.tif")


def skip_gfp_at_plane_1(real: Any) -> Any:
    """An engine's setup_event that skips the GFP burst at plane 1 (as an engine does with SkipEvent, e.g. a focus
    it could not find)."""
    from pymmcore_plus.mda import SkipEvent

    def setup_event(*args: Any) -> Any:
        event = args[-1]
        frames = getattr(event, "events", None) or [event]  # a burst: a SequencedEvent of its frames' events
        if event.channel.config == "GFP" and dict(frames[0].index).get("z") == 1:
            raise SkipEvent(len(frames))
        return real(*args)

    return setup_event


def test_a_stream_the_runner_skips_is_reported_missing(small_core: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner skips the GFP burst at plane 1 and the run ends as planned: the report lists that stream as
    missing, with a warning naming it, and says it is short of the plan."""
    monkeypatch.setattr(small_core.mda.engine, "setup_event", skip_gfp_at_plane_1(small_core.mda.engine.setup_event))
    report = record_bursts(small_core, plan_grab(small_core, two_planes(), 3, tmp_path / "run"))
    gfp1 = key_text(stream_key({"position": 0, "z": 1}, "GFP"))
    assert not report.stopped and report.short and report.missing == [gfp1]
    assert (report.frames, report.frames_planned, len(report.streams), report.streams_planned) == (9, 12, 3, 4)
    assert [w for w in report.warnings if gfp1 in w] == [f"{gfp1}: no frame recorded (the runner skipped its burst; "
                                                         "its log says why)"]
    assert {tuple(m["channels"]) for m in read_frame_metadata(tmp_path / "run" / "p000_z001.ome.tif")} == {("DAPI",)}


def test_bad_requests_are_refused_naming_what_was_expected(small_core: Any, tmp_path: Path) -> None:
    """A channel the core's Channel group lacks, fewer than 2 frames and a grab already there are refused before
    anything moves."""
    fitc = useq.MDASequence(channels=["DAPI", "FITC"])
    with pytest.raises(ValueError, match=r"channel 'FITC': expected one of the core's 'Channel' presets "
                                         r"\(Cy5, DAPI, GFP\), got 'FITC'"):
        plan_grab(small_core, fitc, 4, tmp_path / "a")
    with pytest.raises(ValueError, match="--frames: expected at least 2"):
        plan_grab(small_core, sequence(), 1, tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "p001_z000.ome.tif").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"p001_z000\.ome\.tif exists: expected a new --out"):
        plan_grab(small_core, sequence(), 4, tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["p001_z000.ome.tif"]


def test_the_derived_sequence_puts_time_innermost_at_every_place() -> None:
    """The burst sequence: the time plan replaced by N loops at interval 0, time innermost, every channel at every
    loop (acquire_every ignored); a position's own sub-sequence (a grid, a time plan of its own), which useq runs
    inside the time loop, gathered into bursts too: each stream's N frames one after the other, once."""
    seq = useq.MDASequence(
        channels=[{"config": "DAPI"}, {"config": "GFP", "acquire_every": 3}], z_plan={"range": 2, "step": 2},
        stage_positions=[(0, 0, 0), useq.Position(x=50, y=0, z=0, sequence=useq.MDASequence(
            grid_plan={"rows": 1, "columns": 2}, time_plan={"interval": 5, "loops": 7}))],
        time_plan={"interval": 2, "loops": 10}, axis_order="tpgcz")
    derived = burst_sequence(seq, 4)
    assert derived.axis_order[-1] == "t" and derived.sizes["t"] == 4
    assert derived.time_plan.interval.total_seconds() == 0
    places, events, in_order = plan_bursts(derived, 4)
    # position 0: 2 planes; position 1: 2 tiles × 2 planes; both channels at each
    assert [p.name for p in places] == ["p000_z000", "p000_z001", "p001_g000_z000", "p001_g001_z000",
                                        "p001_g000_z001", "p001_g001_z001"]
    assert all(p.channels == ["DAPI", "GFP"] for p in places) and len(events) == 6 * 2 * 4 and not in_order
    runs = [(k, [int(dict(e.index)["t"]) for e in g]) for k, g in itertools.groupby(
        events, key=lambda e: (e.channel.config, *(dict(e.index).get(a) for a in "pgz")))]
    assert len(runs) == 12 and all(ts == [0, 1, 2, 3] for _, ts in runs)
    assert plan_bursts(burst_sequence(sequence(), 3), 3)[2]  # a flat sequence is run as it is


def test_a_grid_of_a_positions_own_sequence_gets_a_burst_per_tile(small_core: Any, tmp_path: Path) -> None:
    """The regrouped events run through the runner: a position's own 1 × 2 grid gives a file per tile, each a burst
    of consecutive frames of that tile only (one channel: a plain T, Y, X stack under the channel's name)."""
    seq = useq.MDASequence(channels=["GFP"], stage_positions=[useq.Position(
        x=30, y=30, z=0, sequence=useq.MDASequence(grid_plan={"rows": 1, "columns": 2}))])
    plan = plan_grab(small_core, seq, 3, tmp_path / "tiles.ome.tif")
    assert not plan.in_order
    report = record_bursts(small_core, plan)
    assert [Path(f).name for f in report.files] == ["tiles_p000_g000.ome.tif", "tiles_p000_g001.ome.tif"]
    xs = []
    for g, f in enumerate(report.files):
        assert read_stack(f, allow_2d=False).shape == (3, SIZE, SIZE)
        meta = [m["channels"]["GFP"] for m in read_frame_metadata(f)]
        assert [m["ImageNumber"] for m in meta] == [0, 1, 2]
        assert all(m["n2n-stream"] == {"channel": "GFP", "grid": g, "position": 0} for m in meta)
        xs.append({m["SimulatorXUm"] for m in meta})
    assert len(xs[0]) == len(xs[1]) == 1 and xs[0] != xs[1]


def test_n2n_grab_mda_on_the_command_line(tmp_path: Path) -> None:
    """`n2n grab --mda SEQUENCE.yaml --frames N --out DIR/`: the simulated camera named as such, the time plan's
    being ignored said in one line, the frames and bytes planned said before anything moves, the files, the report
    per stream (--json); bad input (--frames missing with --mda among it) refused in one line with exit status 2,
    and an existing grab never written over."""
    from typer.testing import CliRunner

    from n2n.cli import app

    cfg = tmp_path / "small.cfg"
    cfg.write_text(SIM_CFG.replace("Width,512", f"Width,{SIZE}").replace("Height,512", f"Height,{SIZE}"))
    seq = tmp_path / "seq.yaml"
    seq.write_text("channels: [DAPI, GFP]\nz_plan: {absolute: [0.0, 3.0]}\nstage_positions: [{x: 30, y: 30, z: 0}]\n"
                   "time_plan: {interval: 1, loops: 5}\n")
    out = tmp_path / "grab"
    base = ["grab", "--mm-config", str(cfg), "--mda", str(seq)]
    result = CliRunner().invoke(app, [*base, "--frames", "3", "--out", f"{out}/", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "SIMULATED camera" in result.output and "time plan (5 time points) is ignored" in result.output
    assert re.search(r"at each of 4 places .*: 12 frames, up to [\d.]+ kB in 2 file\(s\)", result.output)
    assert sorted(p.name for p in out.iterdir()) == ["p000_z000.ome.tif", "p000_z001.ome.tif"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["streams"]) == 4 and all(s["frames"] == 3 for s in report["streams"].values())
    assert "n2n train" in result.output and "--per-channel" in result.output
    again = CliRunner().invoke(app, [*base, "--frames", "3", "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    for args, words in (([*base, "--frames", "1"], "--frames"),
                        (["grab", "--mm-config", str(cfg), "--mda", str(tmp_path / "none.yaml")], "no such file"),
                        ([*base, "--frames", "3", "--gui"], "in-process core"),
                        (base, "--frames: expected the frames of each burst with --mda (the sequence has 4 bursts")):
        refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "other")])
        assert refused.exit_code == 2 and words in refused.output, (args, refused.output)
        assert "Traceback" not in refused.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: [DAPI, FITC]\n")
    refused = CliRunner().invoke(app, ["grab", "--mm-config", str(cfg), "--mda", str(bad), "--frames", "3", "--out",
                                       str(tmp_path / "other")])
    assert refused.exit_code == 2 and "'FITC'" in refused.output and "DAPI" in refused.output
    assert not (tmp_path / "other").exists()


def test_n2n_grab_mda_exits_non_zero_when_the_runner_skipped_a_burst(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`n2n grab` (the sequence and the frames of each burst given in its --config file) whose runner skipped a
    burst: a row and a warning for the missing stream, the report written (--json, its `missing`), and an error
    line naming it, exit status 2, instead of a quiet success."""
    from pymmcore_plus.mda import MDAEngine
    from typer.testing import CliRunner

    from n2n.cli import app

    monkeypatch.setattr(MDAEngine, "setup_event", skip_gfp_at_plane_1(MDAEngine.setup_event))
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SIM_CFG.replace("Width,512", f"Width,{SIZE}").replace("Height,512", f"Height,{SIZE}"))
    seq = tmp_path / "seq.yaml"
    seq.write_text("channels: [DAPI, GFP]\nz_plan: {absolute: [0.0, 3.0]}\nstage_positions: [{x: 30, y: 30, z: 0}]\n")
    settings = tmp_path / "grab.yaml"
    settings.write_text("source: {config_file: small.cfg}\ngrab: {frames: 2, mda: seq.yaml}\n")
    result = CliRunner().invoke(app, ["grab", "--config", str(settings), "--out", f"{tmp_path / 'grab'}/", "--json",
                                      str(tmp_path / "r.json")])
    gfp1 = key_text(stream_key({"position": 0, "z": 1}, "GFP"))
    assert result.exit_code == 2, result.output
    assert "(skipped)" in result.output and f"warning: {gfp1}: no frame recorded" in result.output
    assert (f"error: expected 8 frames (2 in each of 4 streams), got 6, though the run was not stopped: 1 stream(s) "
            f"got none ({gfp1})") in result.output
    assert "Traceback" not in result.output
    assert json.loads((tmp_path / "r.json").read_text())["missing"] == [gfp1]
