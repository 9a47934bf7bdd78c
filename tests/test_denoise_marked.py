"""``n2n denoise`` never denoises a plane twice without being asked (issue 33): an input whose planes n2n denoised
already (an ``n2n denoise`` output, the ``denoised`` channel of an ``n2n bridge`` recording, a recording made
through the pycromanager hook) is refused in one line with status 2, naming the raw record where the metadata says
it; ``--denoise-again`` denoises them anyway (one warning), ``--skip-denoised`` copies them as they are; the marks
read are the input's, so a resume is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from test_cli_errors import assert_one_error_line, n2n
from test_denoise import FP32, frames, opened, served, stop_after

from streamer.datasets import DatasetError, DatasetInfo
from streamer.datasets.ometiff import write_ome_tiff
from streamer.offline import AlreadyDenoised, DenoiseInterrupted, denoise
from streamer.offline.config import DenoiseConfig
from streamer.offline.store import DENOISED_NAMESPACE
from streamer.sources import OmeTiffWriter

CLI_FP32 = ("--precision", "fp32", "--threads", "1")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "raw.ome.tif"
    tifffile.imwrite(path, frames(4), ome=True, metadata={"axes": "TYX"})
    return path


@pytest.fixture
def bridge_recording(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An OME-TIFF as ``n2n bridge`` writes it (its own writer): 4 time points, channels ``raw`` and ``denoised``,
    metadata per time point; time point 2 came back raw (``n2n-denoised: false``, ``n2n-raw-only``)."""
    raw_frames, den_frames = frames(4, seed=7), frames(4, seed=8)
    path = tmp_path / "bridge.ome.tif"
    with OmeTiffWriter(path, (64, 64), np.uint16, channels=("raw", "denoised")) as writer:
        for t in range(4):
            kept_raw = t == 2
            meta = {"ImageNumber": t, "seq": t, "n2n-denoised": not kept_raw}
            if kept_raw:
                meta["n2n-raw-only"] = "not_returned"
            writer.write([raw_frames[t], raw_frames[t] if kept_raw else den_frames[t]], meta)
    return path, np.stack([raw_frames, np.stack([raw_frames[2] if t == 2 else den_frames[t] for t in range(4)])],
                          axis=1)


def notes_of(path: Path) -> dict[str, str]:
    with tifffile.TiffFile(path) as tif:
        found = tifffile.xml2dict(tif.ome_metadata)["OME"]["StructuredAnnotations"]["CommentAnnotation"]
    return {n["Namespace"]: n["Value"] for n in (found if isinstance(found, list) else [found])}


@pytest.mark.parametrize("suffix", [".ome.tif", ".ome.zarr"])
def test_a_denoised_output_fed_back_is_refused_and_denoise_again_proceeds(
        trained_run: dict[str, Path], raw: Path, tmp_path: Path, suffix: str) -> None:
    once = tmp_path / f"once{suffix}"
    assert n2n("denoise", raw, "--model", trained_run["run"], "--out", once, *CLI_FP32).exit_code == 0
    twice = tmp_path / "twice.ome.tif"

    refused = n2n("denoise", once, "--model", trained_run["run"], "--out", twice, *CLI_FP32)

    how = "its OME-XML" if suffix == ".ome.tif" else "its attributes"
    assert_one_error_line(refused.output, refused.exit_code,
                          f"{once}: 4 of the 4 planes to denoise are denoised already ({how} records them as denoised "
                          f"by n2n denoise); denoising them again over-smooths them: it was made by n2n denoise "
                          f"from {raw.resolve()}: denoise that instead; or pass --denoise-again to denoise them "
                          "anyway")
    assert not twice.exists() and not list(tmp_path.glob("twice*"))

    again = n2n("denoise", once, "--model", trained_run["run"], "--out", twice, *CLI_FP32, "--denoise-again",
                "--json", tmp_path / "s.json")

    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())  # the log's lines wrap at the terminal's width
    assert said.count("WARNING") == 1 and "denoising again 4 plane(s) marked denoised already" in said, said
    _, first = opened(once)
    assert np.array_equal(opened(twice)[1], np.stack(served(trained_run["run"], first)))
    summary = json.loads((tmp_path / "s.json").read_text())
    counts = ("planes_denoised", "planes_marked_denoised", "planes_denoised_again")
    assert [summary[k] for k in counts] == [4, 4, 4]


def test_the_output_records_its_denoised_planes(trained_run: dict[str, Path], raw: Path, tmp_path: Path) -> None:
    denoise(raw, trained_run["run"], tmp_path / "den.ome.tif", DenoiseConfig(**FP32))
    denoise(raw, trained_run["run"], tmp_path / "den.zarr", DenoiseConfig(**FP32))

    in_tiff = json.loads(notes_of(tmp_path / "den.ome.tif")[DENOISED_NAMESPACE])
    in_zarr = dict(zarr.open_group(tmp_path / "den.zarr", mode="r").attrs)["n2n-live"]["denoised_planes"]
    for record in (in_tiff, in_zarr):
        assert record["planes"] == [[0, 4]] and record["input"] == str(raw.resolve()) and record["channel"] is None


def test_a_bridge_recording_points_at_its_raw_channel(trained_run: dict[str, Path],
                                                      bridge_recording: tuple[Path, np.ndarray],
                                                      tmp_path: Path) -> None:
    path, planes = bridge_recording
    raw_hint = ("denoising them again over-smooths them: its raw record is channel 'raw' (the camera's frames): pass "
                "--channel raw to denoise that one (the other channels are copied); or pass --denoise-again to "
                "denoise them anyway")

    whole = n2n("denoise", path, "--model", trained_run["run"], "--out", tmp_path / "a.ome.tif", *CLI_FP32)
    assert_one_error_line(whole.output, whole.exit_code,
                          f"{path}: 3 of the 8 planes to denoise are denoised already (n2n-denoised: true in their "
                          f"metadata); {raw_hint}, or --skip-denoised to denoise only the other 5 and copy these as "
                          "they are")
    channel = n2n("denoise", path, "--model", trained_run["run"], "--out", tmp_path / "a.ome.tif", *CLI_FP32,
                  "--channel", "denoised")
    assert_one_error_line(channel.output, channel.exit_code,
                          f"{path}: 3 of the 4 planes to denoise are denoised already (n2n-denoised: true in their "
                          f"metadata); {raw_hint}, or --skip-denoised to denoise only the other 1 and copy these as "
                          "they are")

    ok = n2n("denoise", path, "--model", trained_run["run"], "--out", tmp_path / "raw_den.zarr", *CLI_FP32,
             "--channel", "raw")

    assert ok.exit_code == 0, ok.output
    _, got = opened(tmp_path / "raw_den.zarr")
    got = got.reshape(4, 2, 64, 64)
    assert np.array_equal(got[:, 0], np.stack(served(trained_run["run"], planes[:, 0])))
    assert np.array_equal(got[:, 1], planes[:, 1])  # the live-denoised channel, copied
    # the output knows its raw channel is denoised now, and the copied planes that were: all but time point 2's
    record = dict(zarr.open_group(tmp_path / "raw_den.zarr", mode="r").attrs)["n2n-live"]["denoised_planes"]
    assert record["planes"] == [[0, 5], [6, 8]] and record["channel"] == 0
    with pytest.raises(AlreadyDenoised, match=r"4 of the 4 planes to denoise are denoised already \(its attributes"):
        denoise(tmp_path / "raw_den.zarr", trained_run["run"], tmp_path / "b.zarr", DenoiseConfig(channel="raw"))


def test_skip_denoised_denoises_only_the_unmarked_planes(trained_run: dict[str, Path],
                                                         bridge_recording: tuple[Path, np.ndarray],
                                                         tmp_path: Path) -> None:
    path, planes = bridge_recording
    out = tmp_path / "skip.ome.tif"

    summary = denoise(path, trained_run["run"], out, DenoiseConfig(skip_denoised=True, channel="denoised", **FP32))

    got = opened(out)[1].reshape(4, 2, 64, 64)
    assert np.array_equal(got[:, 0], planes[:, 0])  # the other channel: copied
    assert np.array_equal(got[[0, 1, 3], 1], planes[[0, 1, 3], 1])  # marked: copied as they are
    assert np.array_equal(got[2, 1], served(trained_run["run"], planes[2:3, 1])[0])  # kept raw live: denoised now
    assert (summary["planes_denoised"], summary["planes_copied_marked"], summary["planes_denoised_again"]) == (1, 3, 0)
    record = json.loads(notes_of(out)[DENOISED_NAMESPACE])
    assert record["planes"] == [[1, 2], [3, 4], [5, 6], [7, 8]]  # every plane of the denoised channel now


def test_hook_marks_in_per_plane_metadata_name_the_saved_raw_frames(trained_run: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """Per-plane metadata as the pycromanager hook leaves it (kept in an OME-TIFF here): all planes marked, the raw
    frames saved (``keep_raw``)."""
    path = tmp_path / "hooked.ome.tif"
    meta = [{"ImageNumber": str(p), "n2n-denoised": True, "n2n-raw-saved": True} for p in range(3)]
    write_ome_tiff(path, DatasetInfo(axes="TYX", shape=(3, 64, 64), dtype=np.uint16, plane_metadata=meta),
                   iter(frames(3)), np.dtype(np.uint16))

    result = n2n("denoise", path, "--model", trained_run["run"], "--out", tmp_path / "o.ome.tif")

    assert_one_error_line(result.output, result.exit_code,
                          f"{path}: 3 of the 3 planes to denoise are denoised already (n2n-denoised: true in their "
                          "metadata); denoising them again over-smooths them: the hook saved the raw frames "
                          "(n2n-raw-saved: true) in the file given as its keep_raw: denoise that one instead; or pass "
                          "--denoise-again to denoise them anyway")


def test_both_answers_at_once_are_refused(trained_run: dict[str, Path], raw: Path, tmp_path: Path) -> None:
    result = n2n("denoise", raw, "--model", trained_run["run"], "--out", tmp_path / "o.ome.tif", "--denoise-again",
                 "--skip-denoised")

    assert_one_error_line(result.output, result.exit_code,
                          "--denoise-again, --skip-denoised: expected at most one of denoise_again (denoise the "
                          "marked planes again) and skip_denoised (copy them as they are), got both")


def test_an_interrupted_denoise_again_resumes_bit_exactly(trained_run: dict[str, Path], raw: Path,
                                                          tmp_path: Path) -> None:
    """The marks read are the input's: the partial output of the run (itself an n2n store) changes nothing, and a
    resume needs the same answer as the run it continues."""
    once = tmp_path / "once.ome.tif"
    denoise(raw, trained_run["run"], once, DenoiseConfig(**FP32))
    cfg = DenoiseConfig(denoise_again=True, chunk_mib=64 * 64 * 2 / 2**20, **FP32)  # tasks of 1 plane
    denoise(once, trained_run["run"], tmp_path / "whole.zarr", cfg)
    with pytest.raises(DenoiseInterrupted):
        denoise(once, trained_run["run"], tmp_path / "part.zarr", cfg, stop_after(2))

    with pytest.raises(DatasetError, match=r"other settings: skip_denoised False \(now True\)"):
        denoise(once, trained_run["run"], tmp_path / "part.zarr", cfg.model_copy(update={"denoise_again": False,
                                                                                       "skip_denoised": True}))
    summary = denoise(once, trained_run["run"], tmp_path / "part.zarr", cfg)

    assert summary["planes_resumed"] == 2 and summary["planes_run"] == 2
    assert np.array_equal(opened(tmp_path / "part.zarr")[1], opened(tmp_path / "whole.zarr")[1])
