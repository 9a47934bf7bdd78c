"""``n2n denoise`` on a damaged recording: every plane that can be read is denoised and written, the others are
named (which, and why) in one error line, listed in the output's metadata and hold no invented pixels; the exit
status is not 0 and there is no traceback. Includes an OME-TIFF whose OME-XML lists 20 planes but whose page
chain holds 1 (19 missing, not a silent 1-plane output)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from test_cli_errors import n2n
from test_denoise import frames

from bench.faults_files import damaged_recordings, run_file_faults
from streamer.datasets import open_dataset
from streamer.datasets.base import PlanesUnreadable, read_available
from streamer.offline.store import MISSING_NAMESPACE


@pytest.fixture
def recordings(tmp_path: Path) -> dict[str, Path]:
    return damaged_recordings(frames(20), tmp_path)


def error_lines(output: str) -> list[str]:
    assert "Traceback" not in output
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_the_reader_names_the_planes_the_file_does_not_hold(recordings: dict[str, Path]) -> None:
    reader = open_dataset(recordings["chain"])
    planes, bad = read_available(reader, 0, 20)
    assert reader.info.planes == 20 and sorted(bad) == list(range(1, 20))
    assert np.array_equal(planes[0], tifffile.imread(recordings["full"])[0]) and not planes[1:].any()
    with pytest.raises(PlanesUnreadable, match=r"cannot read 19 plane\(s\), the first 1 \(not in the file"):
        reader.read(0, 20)
    reader.close()

    reader = open_dataset(recordings["cut_zlib"])  # tifffile alone gives its first plane only
    _, bad = read_available(reader, 0, 20)
    assert reader.info.planes == 20 and sorted(bad) == list(range(9, 20)) and reader.damage
    reader.close()


def test_denoise_writes_what_it_can_read_and_names_the_rest(trained_run: dict[str, Path],
                                                          recordings: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "den.ome.tif"
    result = n2n("denoise", recordings["chain"], "--model", trained_run["run"], "--out", out, "--precision", "fp32",
                 "--json", tmp_path / "s.json")

    lines = error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {recordings['chain']}: 19 of 20 planes could not be read (planes 1-19: "
                               "not in the file")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["planes_unreadable"] == 19 and summary["planes_denoised"] == 1
    with tifffile.TiffFile(out) as tif:
        written = tif.asarray()
        notes = tifffile.xml2dict(tif.ome_metadata)["OME"]["StructuredAnnotations"]["CommentAnnotation"]
    notes = notes if isinstance(notes, list) else [notes]
    missing = json.loads(next(n["Value"] for n in notes if n["Namespace"] == MISSING_NAMESPACE))
    assert written.shape == (20, 64, 64) and written[0].any() and not written[1:].any()
    assert sorted(map(int, missing["planes"])) == list(range(1, 20))


@pytest.mark.parametrize("case", ["cut_zlib", "cut"])
def test_a_file_cut_short_is_one_line_and_an_ome_zarr_output_lists_the_missing(
        trained_run: dict[str, Path], recordings: dict[str, Path], tmp_path: Path, case: str) -> None:
    out = tmp_path / "den.ome.zarr"
    result = n2n("denoise", recordings[case], "--model", trained_run["run"], "--out", out, "--precision", "fp32")

    lines = error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {recordings[case]}: ") and "cut short" in lines[0]
    ours = dict(zarr.open_group(out, mode="r").attrs)["n2n-live"]
    assert ours["job"]["complete"] is True and ours["missing_planes"]["input_damage"]
    if case == "cut_zlib":
        assert sorted(map(int, ours["missing_planes"]["planes"])) == list(range(9, 20))
        assert ours["flagged_planes"]["unreadable"] == list(range(9, 20))


@pytest.mark.slow
def test_the_file_fault_benchmark_reports_the_refusals(trained_run: dict[str, Path], tmp_path: Path) -> None:
    report = run_file_faults(trained_run["run"], tmp_path)

    assert report["denoise"]["ome_xml_20_pages_1"]["planes_named_missing"] == 19
    assert all(c["exit_code"] != 0 and not c["traceback"] and c["error_lines"] == 1
               for c in report["denoise"].values())
    assert report["train_float64"]["one_line"] and report["train_int8"]["one_line"]
    assert report["train_full_disk"]["tmp_left"] == [] and report["train_full_disk"]["checkpoint_intact"]
    assert report["hook_keep_raw"]["refused"] == 2 and report["hook_keep_raw"]["reported_saved"] == 2
    assert all(c["returned"] and c["error"].startswith("TimeoutError")
               for c in report["client_unknown_curve_key"]["calls"])
