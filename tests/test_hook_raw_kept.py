"""Every raw image a microscopist acquires through the hook's ``keep_raw`` is kept, never written over: a
``.ome.tif`` that exists is refused when the hook is made (as a used folder is), an acquisition of one channel or
one position keeps its raw images in the OME-TIFF, a time point saved twice is refused, the first image not saved
is logged as an error, a killed process leaves a TIFF of every image saved, and a raw writer's own failure never
costs the frame its denoising. ``hook.with_raw`` tells pycromanager's backends apart by the acquisition calling it,
not by what ran before in the process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import REPO_ROOT
from serverkit import config

from streamer.core.filenames import safe_name
from streamer.datasets import open_dataset
from streamer.micromanager import denoise_hook
from streamer.server import running_server
from streamer.sources import read_stack
from streamer.sources.tiff import read_frame_metadata

DOWN = "tcp://127.0.0.1:47988"  # nothing listens here


def frame(value: int) -> np.ndarray:
    return np.full((16, 24), value, np.uint16)


def record(path: Path, n: int = 3, **axes: Any) -> None:
    with denoise_hook(DOWN, timeout_s=0.1, keep_raw=path) as hook:
        for t in range(n):
            hook(frame(t + 1), {"Axes": {"time": t, **axes}})
    assert hook.raw_saved == n


def test_a_tif_keep_raw_that_exists_is_refused_when_the_hook_is_made(tmp_path: Path) -> None:
    """Running the cell again with the same ``keep_raw="raw.ome.tif"``: a one-line ValueError saying how to go on,
    and the first recording's 3 images stay as they were."""
    path = tmp_path / "raw.ome.tif"
    record(path)

    with pytest.raises(ValueError, match=r"expected a new file .*, a file: a record is never written over another; "
                                         r"give keep_raw another name, or delete it first") as caught:
        denoise_hook(DOWN, keep_raw=path)

    assert "\n" not in str(caught.value)
    assert np.array_equal(read_stack(path), np.stack([frame(1), frame(2), frame(3)]))
    assert len(read_frame_metadata(path)) == 3
    with pytest.raises(ValueError, match=r"a folder that holds files: .* another name, or delete it first"):
        denoise_hook(DOWN, keep_raw=tmp_path)  # the used-folder rule says the same


def test_two_hooks_on_one_tif_path_never_write_over_each_other(tmp_path: Path) -> None:
    """Two hooks made on the same new path before either saved: the second's images are refused (the file exists
    by then), the first's are all kept."""
    path = tmp_path / "raw.ome.tif"
    first, second = (denoise_hook(DOWN, timeout_s=0.1, keep_raw=path) for _ in range(2))
    with first, second:
        assert first(frame(1), {"Axes": {"time": 0}})[1]["n2n-raw-saved"] is True
        refused = second(frame(9), {"Axes": {"time": 0}})[1]
        assert first(frame(2), {"Axes": {"time": 1}})[1]["n2n-raw-saved"] is True

    assert refused["n2n-raw-saved"] is False and "never written over another" in refused["n2n-raw-error"]
    assert second.raw_errors == 1 and second.raw_saved == 0
    assert np.array_equal(read_stack(path), np.stack([frame(1), frame(2)]))


def test_a_tif_keeps_an_axis_that_never_changes_and_refuses_one_that_does(tmp_path: Path) -> None:
    """One channel set through a channel group at a single position: every image kept, with its Axes; then an image
    of another channel (flattened into T otherwise) and one at a time point saved already are refused, each saying
    why, the first refusal logged as an error once."""
    path = tmp_path / "raw.ome.tif"
    caught: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = caught.append  # type: ignore[method-assign]
    logger = logging.getLogger("n2n.micromanager")
    logger.addHandler(handler)
    try:
        with denoise_hook(DOWN, timeout_s=0.1, keep_raw=path) as hook:
            kept = [hook(frame(t + 1), {"Axes": {"time": t, "channel": "GFP", "position": 0}})[1] for t in range(3)]
            other = hook(frame(7), {"Axes": {"time": 3, "channel": "DAPI", "position": 0}})[1]
            again = hook(frame(8), {"Axes": {"time": 1, "channel": "GFP", "position": 0}})[1]
            untimed = hook(frame(9), {"Axes": {"channel": "GFP", "position": 0}})[1]
    finally:
        logger.removeHandler(handler)

    assert all(m["n2n-raw-saved"] is True for m in kept) and untimed["n2n-raw-saved"] is True
    assert other["n2n-raw-saved"] is False and again["n2n-raw-saved"] is False
    assert "at channel='GFP' (its first image's): this image's channel='DAPI' would be flattened into T" in \
        other["n2n-raw-error"] and "give keep_raw a folder" in other["n2n-raw-error"]
    assert "an image at time=1 is in raw.ome.tif already" in again["n2n-raw-error"]
    assert hook.raw_saved == 4 and hook.raw_refused == hook.raw_errors == 2
    assert np.array_equal(read_stack(path), np.stack([frame(1), frame(2), frame(3), frame(9)]))
    assert [m["Axes"].get("time") for m in read_frame_metadata(path)] == [0, 1, 2, None]
    errors = [r for r in caught if r.levelno >= logging.ERROR and "not saved" in r.getMessage()]
    assert len(errors) == 1 and "channel='DAPI'" in errors[0].getMessage()


_KILLED = """
import os, sys
import numpy as np
from streamer.micromanager import denoise_hook
hook = denoise_hook("{down}", timeout_s=0.1, keep_raw=sys.argv[1])
for t in range(3):
    hook(np.full((16, 24), t + 1, np.uint16), {{"Axes": {{"time": t}}, "ImageNumber": str(t)}})
os._exit(3)  # no close, no interpreter exit: a killed process
"""


def test_a_killed_process_leaves_a_tif_of_every_raw_image_saved(tmp_path: Path) -> None:
    """Killed after 3 images, before the OME-XML is written: a plain TIFF of the 3 pages, bit-exact, that tifffile,
    ``n2n train`` (read_stack) and ``n2n denoise`` (open_dataset) read as a time series; no metadata."""
    path = tmp_path / "raw.ome.tif"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _KILLED.format(down=DOWN), str(path)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 3, proc.stderr[-2000:]

    expected = np.stack([frame(1), frame(2), frame(3)])
    assert np.array_equal(tifffile.imread(path), expected)
    assert np.array_equal(read_stack(path), expected)
    reader = open_dataset(path)
    try:
        assert (reader.info.axes, reader.info.shape) == ("TYX", (3, 16, 24))
    finally:
        reader.close()
    assert read_frame_metadata(path) == []


def small(value: int) -> np.ndarray:
    """A frame of a new ROI (8 x 12, after 16 x 24)."""
    return np.full((8, 12), value, np.uint16)


@pytest.mark.parametrize("name", ["raw", "raw.ome.tif"], ids=["NDTiff folder", "OME-TIFF"])
def test_a_new_roi_goes_on_in_the_next_free_name_never_over_what_is_there(tmp_path: Path, name: str) -> None:
    """``raw_2`` (a folder that holds a file, or a ``raw_2.ome.tif``) is there from a run before: the record of the
    new ROI goes on in ``raw_3`` instead, and ``raw_2`` stays byte for byte as it was."""
    stem, dot, suffix = name.partition(".")
    there, third = tmp_path / f"{stem}_2{dot}{suffix}", tmp_path / f"{stem}_3{dot}{suffix}"
    kept = there / "notes.txt" if not dot else there
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(b"a run before")
    with denoise_hook(DOWN, timeout_s=0.1, keep_raw=tmp_path / name) as hook:
        metas = [hook(image, {"Axes": {"time": t}})[1]
                 for t, image in enumerate([frame(1), frame(2), small(3), small(4)])]

    assert all(m["n2n-raw-saved"] is True for m in metas)
    assert hook.raw_records == [str(tmp_path / name), str(third)]
    assert kept.read_bytes() == b"a run before"
    if not dot:
        assert [p.name for p in there.iterdir()] == ["notes.txt"]  # nothing written into it
    if dot:
        assert np.array_equal(read_stack(tmp_path / name), np.stack([frame(1), frame(2)]))
        assert np.array_equal(read_stack(third), np.stack([small(3), small(4)]))
        assert [m["Axes"]["time"] for m in read_frame_metadata(third)] == [2, 3]
    else:
        from ndstorage import Dataset

        for path, images in ((tmp_path / name, {0: frame(1), 1: frame(2)}), (third, {2: small(3), 3: small(4)})):
            with Dataset(str(path)) as ds:
                assert sorted(c["time"] for c in ds.get_image_coordinates_list()) == sorted(images)
                assert all(np.array_equal(ds.read_image(time=t), image) for t, image in images.items())


def test_a_tif_record_split_by_a_new_roi_keeps_its_axes_and_time_points_across_its_files(tmp_path: Path) -> None:
    """One GFP series, then a new ROI: an image of another channel, or at a time point in ``raw.ome.tif`` already,
    is refused (never begins ``raw_2.ome.tif`` with it); the GFP series goes on in ``raw_2.ome.tif``, where a time
    point saved twice is refused too, naming the file that holds it."""
    path = tmp_path / "raw.ome.tif"
    with denoise_hook(DOWN, timeout_s=0.1, keep_raw=path) as hook:
        first = [hook(frame(t + 1), {"Axes": {"time": t, "channel": "GFP"}})[1] for t in range(2)]
        other = hook(small(7), {"Axes": {"time": 2, "channel": "DAPI"}})[1]
        again = hook(small(8), {"Axes": {"time": 1, "channel": "GFP"}})[1]
        assert hook.raw_records == [str(path)]  # nothing refused began a file
        later = [hook(small(t + 1), {"Axes": {"time": t, "channel": "GFP"}})[1] for t in (2, 3)]
        twice = hook(small(9), {"Axes": {"time": 3, "channel": "GFP"}})[1]

    assert all(m["n2n-raw-saved"] is True for m in first + later)
    assert "this image's channel='DAPI' would be flattened into T" in other["n2n-raw-error"]
    assert "an image at time=1 is in raw.ome.tif already" in again["n2n-raw-error"]
    assert "an image at time=3 is in raw_2.ome.tif already" in twice["n2n-raw-error"]
    assert hook.raw_saved == 4 and hook.raw_refused == hook.raw_errors == 3
    assert hook.raw_records == [str(path), str(tmp_path / "raw_2.ome.tif")]
    assert np.array_equal(read_stack(tmp_path / "raw_2.ome.tif"), np.stack([small(3), small(4)]))


_KILLED_AFTER_ROI = """
import os, sys
import numpy as np
from streamer.micromanager import denoise_hook
hook = denoise_hook("{down}", timeout_s=0.1, keep_raw=sys.argv[1])
for t in range(2):
    hook(np.full((16, 24), t + 1, np.uint16), {{"Axes": {{"time": t}}}})
for t in range(2, 5):
    hook(np.full((8, 12), t + 1, np.uint16), {{"Axes": {{"time": t}}}})
os._exit(3)  # no close, no interpreter exit: a killed process
"""


def test_a_killed_process_leaves_every_raw_image_of_both_sizes(tmp_path: Path) -> None:
    """Killed after 2 images and 3 of a new ROI: both files are open (a file per size: the first takes that size's
    images again if it comes back) and both are crash-safe: plain TIFFs of every page saved (2 and 3)."""
    path = tmp_path / "raw.ome.tif"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_AFTER_ROI.format(down=DOWN), str(path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 3, proc.stderr[-2000:]

    assert np.array_equal(tifffile.imread(path), np.stack([frame(1), frame(2)]))
    assert read_frame_metadata(path) == []  # its OME-XML comes at close
    cut = tmp_path / "raw_2.ome.tif"
    assert np.array_equal(tifffile.imread(cut), np.stack([small(3), small(4), small(5)]))
    assert read_frame_metadata(cut) == []


class BrokenWriter:
    """A raw record whose writer fails with an exception that is neither OSError nor ValueError."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, image: np.ndarray, meta: dict[str, Any]) -> None:
        raise KeyError("ndstorage: no such index entry")

    def close(self) -> None:
        pass


def test_a_raw_writer_failing_in_its_own_way_never_costs_the_frame_its_denoising(
        trained_run: dict[str, Path], tmp_path: Path) -> None:
    """The raw copy fails with a KeyError: the frame still comes back denoised, the raw failure counted and said in
    n2n-raw-error; the acquisition goes on."""
    image = np.random.default_rng(3).integers(100, 4000, (64, 64)).astype(np.uint16)
    with running_server(trained_run["run"], config()) as server, \
            denoise_hook(server.endpoints, keep_raw=tmp_path / "raw") as hook:
        hook._raw = BrokenWriter(tmp_path / "raw")
        out, meta = hook(image, {"Axes": {"time": 0}})
        expected = server.denoiser(image)

    assert meta["n2n-denoised"] is True and np.array_equal(out, expected)
    assert meta["n2n-raw-saved"] is False and meta["n2n-raw-error"] == "KeyError: 'ndstorage: no such index entry'"
    assert hook.raw_errors == 1 and hook.raw_refused == 0 and hook.errors == 0


@pytest.fixture
def python_backend_ran() -> Iterator[None]:
    """The process after a Python-backend acquisition and pycromanager's ``stop_headless``: its acquisition engine
    shut down, its ``Engine.singleton`` still set (pycromanager never resets it)."""
    from pycromanager.acquisition.acq_eng_py.internal.engine import Engine

    if Engine.get_instance() is not None:
        yield
        return
    Engine(None).shutdown()
    try:
        yield
    finally:
        del Engine.singleton


def test_with_raw_tells_the_backend_by_the_acquisition_calling_it(python_backend_ran: None) -> None:
    """pycromanager calls an image processor through its acquisition's ``_call_image_process_fn``: called so by a
    Java-backend acquisition, with_raw returns raw and denoised even after a Python-backend one ran in the process;
    called by a Python-backend acquisition, the denoised image alone, marked."""
    from pycromanager.acquisition.java_backend_acquisitions import JavaBackendAcquisition
    from pycromanager.acquisition.python_backend_acquisitions import PythonBackendAcquisition

    image = frame(5)
    with denoise_hook(DOWN, timeout_s=0.1) as hook:
        java, python = JavaBackendAcquisition.__new__(JavaBackendAcquisition), \
            PythonBackendAcquisition.__new__(PythonBackendAcquisition)  # (not started: no Micro-Manager here)
        java._process_fn = python._process_fn = hook.with_raw
        from_java = java._call_image_process_fn(image, {"Axes": {"time": 0, "channel": "GFP"}})
        from_python = python._call_image_process_fn(image, {"Axes": {"time": 1, "channel": "GFP"}})

    assert isinstance(from_java, list) and [m["Axes"]["channel"] for _, m in from_java] == ["GFP", "GFP raw"]
    assert from_java[1][0] is image
    assert isinstance(from_python, tuple) and from_python[1]["n2n-raw-emitted"] is False
    assert hook.raw_emitted == 1 and hook.raw_not_emitted == 1


def test_file_names_from_free_text_follow_one_rule() -> None:
    """Channel names become folder names (n2n train --per-channel) and stream file names (n2n grab --mda) alike."""
    # n2n grab --mda names its files through grab_plan (split out of grab_mda), which takes the one rule's function
    from streamer.micromanager import grab_mda, grab_plan

    assert grab_plan.safe_name is safe_name and grab_mda.safe_name is safe_name
    for text, name in [("GFP / 488 nm", "GFP_488_nm"), ("DAPI", "DAPI"), ("Cy5 (far-red)", "Cy5_far-red_"),
                       ("a..b", "a..b"), ("ü-ß", "ü-ß"), ("../x", ".._x"), ("..", "_"), (".", "_"), ("", "_"),
                       ("...", "_"), ("/", "_")]:
        assert safe_name(text) == name, (text, safe_name(text))
