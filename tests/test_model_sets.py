"""Issue 32, a model per channel (the server side): a model set names each channel's model (and a default); the
server loads each model once and routes every frame by its channel (``meta.channel``, else ``meta.stream``'s),
sends a frame of a channel without a model back raw, flagged ``raw:no_model`` and counted, and keeps a K-frame
model's histories per model and per channel. Real ZeroMQ on 127.0.0.1, real ONNX Runtime, tiny real models."""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import tiny_train_dict
from serverkit import camera_frames, config
from typer.testing import CliRunner

from n2n.cli import app
from streamer.client import StreamClient
from streamer.core.modelset import NO_MODEL_FLAG, ModelSet, ModelSetError
from streamer.core.streams import channel_of, key_text, stream_key
from streamer.denoiser import Denoiser
from streamer.micromanager import denoise_hook
from streamer.server import ServeConfig, load_denoiser, running_server
from trainer.config import TrainConfig

K = 3


def renormalised(run: Path, dst: Path, scale: float) -> Path:
    """A copy of ``run`` whose card says another normalisation (the same network on another brightness scale): a
    second model whose output really differs, without training one."""
    shutil.copytree(run, dst)
    card = json.loads((dst / "model.json").read_text())
    norm = card["normalization"]
    norm["mean"], norm["std"] = norm["mean"] * scale, norm["std"] * scale
    card["name"] = dst.name
    (dst / "model.json").write_text(json.dumps(card, indent=2))
    return dst


@pytest.fixture(scope="module")
def pair(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two single-frame models: the session's run (DAPI) and a renormalised copy of it (GFP)."""
    base = tmp_path_factory.mktemp("model_sets")
    return {"DAPI": trained_run["run"], "GFP": renormalised(trained_run["run"], base / "gfp", 1.6)}


@pytest.fixture(scope="module")
def k_pair(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two K = 3 models: one trained on the session's simulated frames, and a renormalised copy."""
    from trainer.run import run_training

    base = tmp_path_factory.mktemp("model_sets_k")
    run = base / "k3"
    run_training(TrainConfig.model_validate(tiny_train_dict(model={"input_frames": K}, quantize={"int8": False})),
                 run, [trained_run["raw"]], [trained_run["truth"]])
    return {"DAPI": run, "other": renormalised(run, base / "k3_other", 1.5)}


def lossless(**overrides: Any) -> ServeConfig:
    return config(mode="lossless", **overrides)


# --- the rules -------------------------------------------------------------------------------------------------
def test_a_set_names_each_channels_model_and_a_default() -> None:
    both = ModelSet.parse(["DAPI=runs/dapi", "GFP=runs/gfp"])
    assert both.model_for("DAPI") == "runs/dapi" and both.model_for("GFP") == "runs/gfp"
    assert both.model_for("Cy5") is None and both.model_for(None) is None and not both.single
    assert both.describe() == "DAPI → runs/dapi, GFP → runs/gfp, any other channel → raw (no model)"

    with_default = ModelSet.parse(["DAPI=runs/dapi", "runs/n2n"])
    assert with_default.model_for("Cy5") == with_default.model_for(None) == "runs/n2n"
    assert with_default.models == ["runs/dapi", "runs/n2n"]

    one = ModelSet.parse("runs/n2n")
    assert one.single and one.models == ["runs/n2n"] and one.model_for("anything") == "runs/n2n"
    shared = ModelSet.parse(["DAPI=runs/a", "GFP=runs/a", "runs/a"])
    assert shared.models == ["runs/a"]  # loaded once, however many channels use it


@pytest.mark.parametrize(("specs", "expected"), [
    (["DAPI=runs/a", "DAPI=runs/b"], "channel 'DAPI' is given twice (--model DAPI=runs/a and --model DAPI=runs/b): "
                                     "expected one model per channel"),
    (["runs/a", "runs/b"], "expected one model without a channel (the default), got runs/a and runs/b"),
    (["DAPI="], "expected --model CHANNEL=FOLDER, got 'DAPI='"),
    ([" =runs/a"], "expected --model CHANNEL=FOLDER, got ' =runs/a'"),
    ([], "expected --model FOLDER or --model CHANNEL=FOLDER, got none"),
])
def test_a_set_that_is_ambiguous_is_refused(specs: list[str], expected: str) -> None:
    with pytest.raises(ModelSetError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        ModelSet.parse(specs)


def test_a_set_file_reads_paths_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "sets").mkdir()
    path = tmp_path / "sets" / "models.yaml"
    ModelSet({"DAPI": "dapi", "GFP": str(tmp_path / "elsewhere" / "gfp")}, "../n2n").save(path)

    models = ModelSet.parse([str(path)])

    assert models.model_for("DAPI") == str(tmp_path / "sets" / "dapi")
    assert models.model_for("GFP") == str(tmp_path / "elsewhere" / "gfp")  # an absolute path stays
    assert Path(models.model_for("Cy5") or "").resolve() == tmp_path / "n2n"
    with pytest.raises(ModelSetError, match="expected one model-set file alone"):
        ModelSet.parse([str(path), "GFP=runs/gfp"])


@pytest.mark.parametrize(("text", "expected"), [
    ("channels:\n  DAPI: runs/dapi\nmodel: runs/x\n",
     r"expected a model set \(keys 'channels' and 'default'\), got \['channels', 'model'\]"),
    ("channels:\n  DAPI: [1, 2]\n", "expected 'channels' to map channel names to model folders"),
    ("channels: [runs/dapi]\n", "expected 'channels' to map channel names to model folders"),
    ("default: 3\n", "expected 'default' to be a model folder or null, got 3"),
    ("- runs/dapi\n", r"expected a model set \(keys 'channels' and 'default'\), got list"),
    ("channels: {DAPI: runs/dapi\n", "expected YAML \\(a model set\\), got unreadable text"),
    ("channels: {}\ndefault: null\n", "a model set needs at least one model"),
])
def test_a_set_file_with_other_values_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ModelSetError, match=expected):
        ModelSet.parse(str(path))


def test_the_stream_key_and_the_channel_of_a_frame() -> None:
    assert stream_key({"t": 3, "p": 0, "c": 1, "z": 2}, "GFP") == {"channel": "GFP", "position": 0, "z": 2}
    assert stream_key({"time": 4, "channel": "GFP", "z": 2}) == {"channel": "GFP", "z": 2}
    assert stream_key({"time": 1}) is None and stream_key(None) is None
    assert key_text(None) == "" and key_text({"z": 1, "channel": "A"}) == '{"channel":"A","z":1}'
    assert channel_of({"channel": "GFP", "stream": {"channel": "DAPI"}}) == "GFP"
    assert channel_of({"stream": {"channel": "DAPI", "z": 1}}) == "DAPI"
    assert channel_of({"channel": 2}) == "2"
    assert channel_of({"channel": {"name": "GFP"}}) is None and channel_of({"stream": [1]}) is None
    assert channel_of(None) is None and channel_of({}) is None


# --- a server of a set ---------------------------------------------------------------------------------------
def test_each_channel_is_denoised_by_its_own_model_and_one_without_comes_back_raw(pair: dict[str, Path]) -> None:
    """DAPI frames equal the DAPI model's own output, GFP frames the GFP model's (and the two differ); a Cy5 frame
    and a frame without a channel come back bit-identical, flagged raw:no_model, counted by channel."""
    frames = camera_frames(6, seed=41)
    channels = ["DAPI", "GFP", "Cy5", "DAPI", None, "GFP"]
    dapi, gfp = (load_denoiser(pair[c], config()) for c in ("DAPI", "GFP"))
    models = ModelSet({"DAPI": str(pair["DAPI"]), "GFP": str(pair["GFP"])})

    with running_server(models, lossless()) as server, StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for i, (frame, channel) in enumerate(zip(frames, channels)):
            client.send(frame, seq=i, meta={"channel": channel} if channel else {"well": "B3"})
        results = [client.receive() for _ in frames]
        requested = client.request(frames[0], meta={"stream": {"channel": "GFP"}}, seq=99)
        status = client.status()

    assert [r.seq for r in results] == list(range(6))
    for frame, channel, result in zip(frames, channels, results):
        if channel in ("DAPI", "GFP"):
            want = (dapi if channel == "DAPI" else gfp)(frame)
            assert np.array_equal(result.pixels, want), channel
            assert "flags" not in result.header and result.header["model"] == pair[channel].name
        else:
            assert result.pixels.dtype == frame.dtype and np.array_equal(result.pixels, frame)
            assert result.header["flags"] == [NO_MODEL_FLAG] and result.header["engine"] == "none"
    assert not np.array_equal(dapi(frames[0]), gfp(frames[0]))  # two models that really differ
    assert np.array_equal(requested.pixels, gfp(frames[0]))  # meta.stream's channel routes a request too
    assert status["no_model"] == {"Cy5": 1, "(none)": 1}
    assert status["served_flags"] == {NO_MODEL_FLAG: 2} and status["served_raw"] == 2
    assert status["frames_out"] == 7 and status["errors"] == 0
    assert set(status["models"]) == {"DAPI", "GFP"} and status["models"]["GFP"]["model"] == "gfp"
    assert status["model"] == status["models"]["DAPI"]["model"] == pair["DAPI"].name  # the first: today's fields
    assert status["model_set"] == models.describe()


def test_batches_hold_frames_of_one_model_and_swap_is_refused(pair: dict[str, Path]) -> None:
    """Lossless batching with channels in runs of four and of one: every frame still equals its own model's
    output, in order; a swap on a server of several models is refused in one line, and it serves on."""
    frames = camera_frames(24, seed=43)
    channels = ["DAPI"] * 4 + ["GFP"] * 4 + ["DAPI", "GFP"] * 4 + ["GFP"] * 4 + ["Cy5"] * 4
    dens = {c: load_denoiser(pair[c], config()) for c in ("DAPI", "GFP")}

    models = ModelSet.parse([f"DAPI={pair['DAPI']}", f"GFP={pair['GFP']}"])
    with running_server(models, lossless(max_batch=4, queue_size=8)) as server, \
            StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for i, (frame, channel) in enumerate(zip(frames, channels)):
            client.send(frame, seq=i, meta={"channel": channel})
        results = [client.receive() for _ in frames]
        with pytest.raises(RuntimeError) as refused:
            client.control("swap", model=str(pair["GFP"]))
        status = client.status()

    assert [r.seq for r in results] == list(range(24))
    for frame, channel, result in zip(frames, channels, results):
        want = frame if channel == "Cy5" else dens[channel](frame)
        assert np.array_equal(result.pixels, want), channel
    assert status["batched_frames"] % 4 == 0 and status["no_model"] == {"Cy5": 4}
    message = str(refused.value)
    assert "\n" not in message and message.endswith(
        f"swap serves one model; this server serves a model set ({server.model_set.describe()}): restart it with "
        "the new set")
    assert status["swaps"] == 0 and status["errors_by_kind"] == {"control_refused": 1}


def test_a_batch_is_taken_only_of_frames_one_model_serves(pair: dict[str, Path]) -> None:
    """Intake.take on a prepared queue: four DAPI frames make a batch; a GFP frame among them, or a Cy5 frame
    (no model) first, makes them go one by one, in order."""
    from streamer.protocol import Message
    from streamer.server.intake import Intake
    from streamer.server.routes import Routes
    from streamer.server.stats import ServerStats

    cfg = lossless(max_batch=4, queue_size=8)
    models = ModelSet.parse([f"DAPI={pair['DAPI']}", f"GFP={pair['GFP']}"])
    stats = ServerStats(cfg.latency_window)
    routes = Routes(models, [load_denoiser(pair[c], cfg) for c in ("DAPI", "GFP")], cfg, stats)
    intake = Intake(cfg, stats, lambda *a: None, lambda *a: None)
    frame = camera_frames(1, seed=44)[0]

    def queue(*channels: str) -> None:
        intake.queue.clear()
        intake.queue.extend(Message({"seq": i, "meta": {"channel": c}}, frame) for i, c in enumerate(channels))

    queue("DAPI", "DAPI", "DAPI", "DAPI", "GFP")
    assert [m.seq for m in intake.take(routes)] == [0, 1, 2, 3] and [m.seq for m in intake.take(routes)] == [4]
    queue("DAPI", "GFP", "DAPI", "DAPI", "DAPI")
    assert [len(intake.take(routes)) for _ in range(2)] == [1, 1]
    queue("Cy5", "DAPI", "DAPI", "DAPI", "DAPI")
    assert len(intake.take(routes)) == 1 and [m.seq for m in intake.take(routes)] == [1, 2, 3, 4]


def test_a_k_frame_set_keeps_each_channels_history_apart(k_pair: dict[str, Path]) -> None:
    """K = 3 models, DAPI's own and a default for any other channel, three channels interleaved in event order:
    every frame equals its model given the frames before it of its own channel only (GFP and Cy5 share the default
    model, never a history)."""
    channels = {"DAPI": camera_frames(4, seed=51),
                "GFP": (camera_frames(4, seed=52).astype(np.float32) * 2).clip(0, 65535).astype(np.uint16),
                "Cy5": camera_frames(4, seed=53)}
    dens = {"DAPI": load_denoiser(k_pair["DAPI"], config()), "other": load_denoiser(k_pair["other"], config())}
    models = ModelSet({"DAPI": str(k_pair["DAPI"])}, str(k_pair["other"]))

    with running_server(models, lossless(motion_threshold=None)) as server, \
            StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        sent = [(name, t) for t in range(4) for name in channels]
        for name, t in sent:
            client.send(channels[name][t], seq=t, meta={"channel": name})
        results = {key: client.receive() for key in sent}
        status = client.status()

    for (name, t), result in results.items():
        den = dens["DAPI" if name == "DAPI" else "other"]
        frames = channels[name]
        assert np.array_equal(result.pixels, den(frames[t], previous=list(frames[max(0, t - K + 1):t]))), (name, t)
    mixed = dens["other"](channels["Cy5"][1], previous=[channels["GFP"][0], channels["GFP"][1]])
    assert not np.array_equal(results[("Cy5", 1)].pixels, mixed)  # what one history for the default's channels gave
    assert status["history_resets"] == {} and status["history_short"] > 0
    assert {m["input_frames"] for m in status["models"].values()} == {K}


def test_the_hook_sends_the_channel_and_keeps_a_channel_without_a_model_raw(pair: dict[str, Path]) -> None:
    """pycromanager's Axes: the GFP image is denoised by the GFP model, the Cy5 image kept raw with
    n2n-denoised false and n2n-flag raw:no_model (the hook's existing flag handling)."""
    frame = camera_frames(1, seed=45)[0]
    gfp = load_denoiser(pair["GFP"], config())
    models = ModelSet({"DAPI": str(pair["DAPI"]), "GFP": str(pair["GFP"])})

    with running_server(models, config()) as server, denoise_hook(server.endpoints) as hook:
        denoised, meta = hook(frame, {"Axes": {"time": 0, "channel": "GFP"}})
        kept, raw_meta = hook(frame, {"Axes": {"time": 0, "channel": "Cy5"}})
        with StreamClient(server.endpoints) as client:
            status = client.status()

    assert meta["n2n-denoised"] is True and np.array_equal(denoised, gfp(frame))
    assert raw_meta["n2n-denoised"] is False and raw_meta["n2n-flag"] == NO_MODEL_FLAG
    assert raw_meta["n2n-flags"] == [NO_MODEL_FLAG] and np.array_equal(kept, frame) and kept.dtype == frame.dtype
    assert hook.denoised == 1 and hook.served_raw == 1 and hook.errors == 0
    assert status["no_model"] == {"Cy5": 1}


def test_a_set_of_one_folder_serves_as_a_model_folder_always_did(pair: dict[str, Path]) -> None:
    """``--model FOLDER`` is a set of one default: every frame, whatever channel it names, is denoised by it."""
    frame = camera_frames(1, seed=47)[0]
    with running_server(str(pair["DAPI"]), config()) as server, StreamClient(server.endpoints) as client:
        result = client.request(frame, meta={"channel": "Cy5"})
        status = client.status()
    assert np.array_equal(result.pixels, server.denoiser(frame)) and "flags" not in result.header
    assert status["no_model"] == {} and list(status["models"]) == ["*"]
    assert server.routes.only is server.routes.primary and server.swap_refusal is None


@pytest.fixture
def channel_core() -> Iterator[Any]:
    """The built-in simulated session at 64×64 with a ``Channel`` group (DAPI, Cy5: two exposures)."""
    from streamer.micromanager.core import close_core, load_core

    mmc = load_core("sim")
    mmc.setProperty("Camera", "Width", 64)
    mmc.setProperty("Camera", "Height", 64)
    mmc.defineConfig("Channel", "DAPI", "Camera", "Exposure", "2.0")
    mmc.defineConfig("Channel", "Cy5", "Camera", "Exposure", "3.0")
    yield mmc
    close_core(mmc)
    del mmc
    gc.collect()


def test_the_bridge_sends_the_cores_channel(channel_core: Any, pair: dict[str, Path], tmp_path: Path) -> None:
    """A core with a Channel group: its current configuration goes with each frame; DAPI frames are denoised by
    DAPI's model, Cy5 frames (no model) are written raw and counted as kept raw."""
    from streamer.micromanager.bridge import current_channel, run_bridge
    from streamer.sources.micromanager import MicroManagerSource

    models = ModelSet({"DAPI": str(pair["DAPI"]), "GFP": str(pair["GFP"])})
    dapi = load_denoiser(pair["DAPI"], config())
    reports = {}
    with running_server(models, lossless(), warmup_shape=(64, 64)) as server:
        for name in ("DAPI", "Cy5"):
            channel_core.setConfig("Channel", name)
            channel_core.waitForConfig("Channel", name)
            assert current_channel(channel_core) == name
            source = MicroManagerSource(channel_core)
            try:
                reports[name] = run_bridge(source, server.endpoints, frames=4, out=tmp_path / f"{name}.ome.tif")
            finally:
                source.close()
        with StreamClient(server.endpoints) as client:
            status = client.status()

    assert reports["DAPI"].frames_denoised == 4 and reports["Cy5"].frames_kept_raw == 4
    for name in ("DAPI", "Cy5"):
        saved = tifffile.imread(tmp_path / f"{name}.ome.tif")
        for raw, served in saved:
            assert np.array_equal(served, dapi(raw) if name == "DAPI" else raw)
    assert status["no_model"] == {"Cy5": 4}


def test_the_channel_is_the_current_config_of_the_cores_channel_group(tmp_path: Path) -> None:
    """The simulated microscope's group before a channel is set (None), after (its name); a core without any
    channel group (the camera alone) and an object that is no core: None."""
    from streamer.micromanager.bridge import channel_group, current_channel
    from streamer.micromanager.core import SIM_CFG, close_core, load_core

    camera_only = tmp_path / "camera.cfg"
    camera_only.write_text("".join(line + "\n" for line in SIM_CFG.splitlines()
                                   if "Camera" in line and "Channel" not in line))
    for cfg, want in (("sim", "GFP"), (camera_only, None)):
        mmc = load_core(cfg)
        try:
            assert current_channel(mmc) is None
            if want is not None:
                assert channel_group(mmc) == "Channel"
                mmc.setConfig("Channel", want)
            assert current_channel(mmc) == want
        finally:
            close_core(mmc)
            del mmc
            gc.collect()
    assert current_channel(object()) is None


# --- n2n serve --model -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "expected"), [
    (["--model", "A=runs/a", "--model", "A=runs/b"],
     "channel 'A' is given twice (--model A=runs/a and --model A=runs/b): expected one model per channel"),
    (["--model", "runs/a", "--model", "runs/b"],
     "expected one model without a channel (the default), got runs/a and runs/b: name the channel each serves "
     "(--model GFP=runs/b)"),
])
def test_serve_refuses_a_bad_set_in_one_line(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, ["serve", *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines == [f"error: {expected}"], result.output


def test_serve_refuses_a_bad_set_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("channels: {DAPI: runs/dapi\n")
    result = CliRunner().invoke(app, ["serve", "--model", str(path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: expected YAML (a model set), got unreadable text")


def test_a_set_of_models_is_loaded_once_each(pair: dict[str, Path]) -> None:
    """Channels that share a model share its Denoiser (one engine, one compile)."""
    from streamer.server import Server

    server = Server(ModelSet({"DAPI": str(pair["DAPI"]), "GFP": str(pair["DAPI"])}, str(pair["GFP"])), config())
    try:
        lanes = server.routes.lanes
        assert [lane.channels for lane in lanes] == [["DAPI", "GFP"], ["*"]]
        assert all(isinstance(lane.denoiser, Denoiser) for lane in lanes) and lanes[0].denoiser is server.denoiser
    finally:
        server.close()
