"""Issue 32: denoising inside a pymmcore-plus MDA. The real UniMMCore with the simulated microscope, pymmcore-plus's
own runner and writers (ome-writers, OME-Zarr), a real server on 127.0.0.1: every frame denoised before it is
written, the raw record complete, a frame that cannot be served written raw and marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import useq
import zarr
from serverkit import config

from streamer.micromanager.core import open_core
from streamer.micromanager.mda import acquire, event_axes, read_sequence
from streamer.server import load_denoiser, running_server

SIZE = 64


def frames_of(path: Path) -> np.ndarray:
    """Every frame of a one-position OME-Zarr written by ome-writers, in acquisition order."""
    group = zarr.open_group(path, mode="r")
    array = np.asarray(group["0"])
    return array.reshape(-1, *array.shape[-2:])


@pytest.fixture
def small_core() -> Any:
    with open_core("sim") as core:
        core.setProperty("Camera", "Width", SIZE)
        core.setProperty("Camera", "Height", SIZE)
        yield core


def test_every_frame_is_denoised_before_it_is_written_and_the_raw_is_kept(
        small_core: Any, trained_run: dict[str, Path], tmp_path: Path) -> None:
    run = trained_run["run"]
    seen: list[dict[str, Any]] = []
    with running_server(run, config()) as server:
        report = acquire(small_core, useq.MDASequence(time_plan={"interval": 0, "loops": 4}), server.endpoints,
                         tmp_path / "acq", on_frame=seen.append)
    assert (report.frames, report.denoised_frames, report.passed_raw, report.raw_recorded) == (4, 4, 0, 4)
    raw, denoised = frames_of(Path(report.raw)), frames_of(Path(report.denoised))
    assert raw.shape == denoised.shape == (4, SIZE, SIZE) and raw.dtype == denoised.dtype == np.uint16
    den = load_denoiser(run, config())
    for t in range(4):  # what was written is the model's answer to what was acquired
        assert np.array_equal(denoised[t], den(raw[t])), t
    assert not np.array_equal(raw[0], raw[1])  # independent noise: four acquisitions, not one repeated
    assert [s["denoised"] for s in seen] == [True] * 4


def test_frames_the_server_cannot_serve_are_written_raw_marked_and_nothing_is_lost(
        small_core: Any, tmp_path: Path) -> None:
    """No server at the address: the acquisition goes on, each frame written as acquired, marked and counted."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen: list[dict[str, Any]] = []
    report = acquire(small_core, useq.MDASequence(time_plan={"interval": 0, "loops": 3}),
                     f"tcp://127.0.0.1:{port}", tmp_path / "acq", timeout_s=0.2, on_frame=seen.append)
    assert (report.frames, report.denoised_frames, report.passed_raw, report.raw_recorded) == (3, 0, 3, 3)
    assert report.reasons == {"error": 3}
    assert np.array_equal(frames_of(Path(report.raw)), frames_of(Path(report.denoised)))
    assert all(s["denoised"] is False and s["error"] for s in seen)


def test_an_existing_acquisition_is_never_overwritten_unless_asked(small_core: Any, tmp_path: Path) -> None:
    (tmp_path / "acq" / "raw.ome.zarr").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"raw\.ome\.zarr exists.*--overwrite"):
        acquire(small_core, useq.MDASequence(time_plan={"interval": 0, "loops": 1}), None, tmp_path / "acq")


def test_the_sequence_file_is_read_or_refused_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "seq.yaml"
    good.write_text("channels: [DAPI, GFP]\ntime_plan: {interval: 0, loops: 3}\nz_plan: {range: 2, step: 1}\n")
    seq = read_sequence(good)
    assert seq.sizes["t"] == 3 and seq.sizes["c"] == 2 and seq.sizes["z"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("time_plan: {interval: 0, loops: -2}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: time_plan.*MDASequence") as exc:
        read_sequence(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="no such file"):
        read_sequence(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    with pytest.raises(ValueError, match="no events"):
        read_sequence(empty)


def test_an_event_is_placed_by_its_index_and_channel_name() -> None:
    event = useq.MDAEvent(index={"t": 2, "p": 1, "c": 0, "z": 3}, channel={"config": "GFP"})
    assert event_axes(event) == {"time": 2, "position": 1, "channel": "GFP", "z": 3}


def test_n2n_acquire_runs_a_sequence_file_end_to_end(trained_run: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from n2n.cli import app
    from streamer.micromanager.core import SIM_CFG

    cfg = tmp_path / "small.cfg"
    cfg.write_text(SIM_CFG.replace("Width,512", f"Width,{SIZE}").replace("Height,512", f"Height,{SIZE}"))
    seq = tmp_path / "seq.yaml"
    seq.write_text("time_plan: {interval: 0, loops: 3}\n")
    out = tmp_path / "acq"
    args = ["acquire", "--mda", str(seq), "--model", str(trained_run["run"]), "--out", str(out), "--mm-config",
            str(cfg)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "acquire.json").read_text())["report"]
    assert report["frames"] == report["denoised_frames"] == report["raw_recorded"] == 3
    assert frames_of(out / "raw.ome.zarr").shape == frames_of(out / "denoised.ome.zarr").shape == (3, SIZE, SIZE)
    again = CliRunner().invoke(app, args)  # the same folder again: refused, the first acquisition kept
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert frames_of(out / "raw.ome.zarr").shape[0] == 3
    missing = CliRunner().invoke(app, ["acquire", "--model", str(trained_run["run"])])
    assert missing.exit_code == 2 and "--mda" in missing.output


@pytest.fixture(scope="module")
def k_run(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny K = 3 run on the session's simulated frames."""
    from conftest import tiny_train_dict

    from trainer.config import TrainConfig
    from trainer.run import run_training

    out = tmp_path_factory.mktemp("mda") / "k3"
    run_training(TrainConfig.model_validate(tiny_train_dict(model={"input_frames": 3}, quantize={"int8": False})),
                 out, [trained_run["raw"]], [trained_run["truth"]])
    return out


def test_a_multi_dimensional_acquisition_keeps_a_history_and_a_model_per_place(
        small_core: Any, k_run: Path, trained_run: dict[str, Path], tmp_path: Path) -> None:
    """2 channels with models (K = 3 for DAPI, K = 1 for GFP) and one without (Cy5) × 2 positions × 2 z × 3 t, in
    pymmcore-plus's order (t, p, c, z): each stream as written equals its raw frames denoised alone by its channel's
    model; Cy5 is written as acquired, marked raw:no_model; the raw record holds every frame with the axes and
    channel names of the acquisition."""
    from streamer.core.history import FrameHistory
    from streamer.core.modelset import ModelSet

    channels = ["DAPI", "GFP", "Cy5"]
    seq = useq.MDASequence(axis_order="tpgcz", channels=channels, z_plan={"range": 2, "step": 2},
                           stage_positions=[(0, 0, 0), (100, -60, 0)], time_plan={"interval": 0, "loops": 3})
    models = ModelSet({"DAPI": str(k_run), "GFP": str(trained_run["run"])})
    seen: list[dict[str, Any]] = []
    with running_server(models, config(motion_threshold=None)) as server:
        report = acquire(small_core, seq, server.endpoints, tmp_path / "acq", on_frame=seen.append)
    n = 3 * 2 * 3 * 2
    assert (report.frames, report.raw_recorded, report.denoised_frames, report.passed_raw) == (n, n, n * 2 // 3,
                                                                                                n // 3)
    assert report.reasons == {"raw:no_model": n // 3} and len(report.streams) == 2 * 3 * 2
    assert sum(1 for s in seen if s.get("flag") == "raw:no_model") == n // 3
    dens = {"DAPI": load_denoiser(k_run, config()), "GFP": load_denoiser(trained_run["run"], config())}
    for p in range(2):
        raw_group = zarr.open_group(Path(report.raw) / str(p), mode="r")
        raw = np.asarray(raw_group["0"])
        out = np.asarray(zarr.open_group(Path(report.denoised) / str(p), mode="r")["0"])
        assert raw.shape == out.shape == (3, 3, 2, SIZE, SIZE)
        ome = raw_group.attrs["ome"]
        assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["t", "c", "z", "y", "x"]
        assert [c["label"] for c in ome["omero"]["channels"]] == channels
        for c, name in enumerate(channels):
            for z in range(2):
                stream = raw[:, c, z]
                if name == "Cy5":
                    assert np.array_equal(out[:, c, z], stream)
                    continue
                hist = FrameHistory(dens[name].input_frames, None)
                alone = [dens[name](f, previous=hist.advance(f, t)) for t, f in enumerate(stream)]
                assert all(np.array_equal(out[t, c, z], alone[t]) for t in range(3)), (p, name, z)
    # the place matters: a DAPI frame at t = 2 denoised from the frames before it in event order (the other
    # channels, planes and positions) would differ
    dapi = np.asarray(zarr.open_group(Path(report.raw) / "0", mode="r")["0"])
    mixed = dens["DAPI"](dapi[2, 0, 1], previous=[dapi[2, 0, 0], dapi[1, 2, 1]])
    written = np.asarray(zarr.open_group(Path(report.denoised) / "0", mode="r")["0"])[2, 0, 1]
    assert not np.array_equal(written, mixed)


def test_an_acquisition_as_ome_tiff_opens_with_its_axes_and_channel_names(
        small_core: Any, trained_run: dict[str, Path], tmp_path: Path) -> None:
    import tifffile

    seq = useq.MDASequence(channels=["DAPI", "GFP"], time_plan={"interval": 0, "loops": 2})
    with running_server(trained_run["run"], config()) as server:
        report = acquire(small_core, seq, server.endpoints, tmp_path / "acq", fmt="ome-tiff")
    assert report.raw.endswith("raw.ome.tif") and report.frames == report.raw_recorded == 4
    for path in (report.raw, report.denoised):
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            assert series.axes == "TCYX" and series.shape == (2, 2, SIZE, SIZE)
            assert "DAPI" in tif.ome_metadata and "GFP" in tif.ome_metadata


def test_records_are_never_written_over(small_core: Any, trained_run: dict[str, Path], tmp_path: Path) -> None:
    """An OME-TIFF of two positions (a file per position in a folder): reported where it is, and a second run into
    the same folder refused by name; one engine run twice (napari-micromanager's MDA widget) keeps each raw record."""
    from streamer.micromanager.mda import DenoisingEngine

    seq = useq.MDASequence(stage_positions=[(0, 0, 0), (100, -60, 0)], time_plan={"interval": 0, "loops": 2})
    with running_server(trained_run["run"], config()) as server:
        report = acquire(small_core, seq, server.endpoints, tmp_path / "tif", fmt="ome-tiff")
        assert Path(report.raw).is_dir() and len(list(Path(report.raw).glob("*.ome.tif"))) == 2
        with pytest.raises(FileExistsError, match="--overwrite"):
            acquire(small_core, seq, server.endpoints, tmp_path / "tif", fmt="ome-tiff")
        engine = DenoisingEngine(small_core, server.endpoints, raw=tmp_path / "raw.ome.zarr")
        previous = small_core.mda.set_engine(engine)
        try:
            for n in range(2):
                small_core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 2}),
                                   output=str(tmp_path / f"denoised{n}.ome.zarr"))
        finally:
            engine.close()
            small_core.mda.set_engine(previous)
    assert engine.raw_records == [str(tmp_path / "raw.ome.zarr"), str(tmp_path / "raw_2.ome.zarr")]
    assert all(frames_of(Path(p)).shape == (2, SIZE, SIZE) for p in engine.raw_records)


def test_a_fault_in_the_engine_writes_the_frame_raw_and_the_acquisition_goes_on(
        small_core: Any, trained_run: dict[str, Path], tmp_path: Path) -> None:
    from streamer.micromanager.mda import DenoisingEngine

    class Faulty(DenoisingEngine):
        def denoise_payload(self, payload: Any, raw_saved: bool | None = None) -> Any:
            if payload[1].index.get("t") == 1:
                raise RuntimeError("a fault of the engine's own")
            return super().denoise_payload(payload, raw_saved)

    seen: list[dict[str, Any]] = []
    with running_server(trained_run["run"], config()) as server:
        engine = Faulty(small_core, server.endpoints, raw=tmp_path / "raw.ome.zarr")
        previous = small_core.mda.set_engine(engine)
        small_core.mda.events.frameReady.connect(lambda _img, _ev, meta: seen.append(meta["n2n"]))
        try:
            small_core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 3}),
                               output=str(tmp_path / "denoised.ome.zarr"))
        finally:
            engine.close()
            small_core.mda.set_engine(previous)
    written = frames_of(tmp_path / "denoised.ome.zarr")
    assert written.shape == (3, SIZE, SIZE) and [s["denoised"] for s in seen] == [True, False, True]
    assert "a fault of the engine's own" in seen[1]["error"]
    assert engine.counts()["streams"]["(error)"] == {"frames": 1, "error": 1}
    assert engine.raw_saved == 3 and seen[1]["raw_saved"] is True  # recorded before the denoising, whatever came
    raw = frames_of(tmp_path / "raw.ome.zarr")
    assert np.array_equal(written[1], raw[1]) and not np.array_equal(written[0], raw[0])
