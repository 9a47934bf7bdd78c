"""The BioImage Model Zoo both ways: ``n2n export --format bioimageio`` writes a package that the zoo's own
``bioimageio test`` passes (offline), and ``--model PACKAGE.zip`` serves, denoises and evaluates a zoo package as it
does the model folder it came from; packages it cannot serve are refused in one line naming why."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import tiny_train_dict, write_tiff
from serverkit import camera_frames, config, stream_all
from test_cli import assert_ok, n2n

from streamer.client import ServerError, StreamClient
from streamer.core.card import ModelCard
from streamer.core.zoo import ZooError, is_package, open_package, spec_files_closed
from streamer.denoiser import Denoiser
from streamer.server import running_server
from trainer.config import TrainConfig


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test unpacks packages into its own cache."""
    monkeypatch.setenv("N2N_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Camera frames of 96² (large enough for the tiny network's halo of 32 px)."""
    return write_tiff(tmp_path_factory.mktemp("sample") / "sample.ome.tif", camera_frames(3, size=96, seed=5))


@pytest.fixture(scope="module")
def package(trained_run: dict[str, Path], sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny run as a zoo package (its own copy of the run: the export adds model.ts)."""
    run = tmp_path_factory.mktemp("zoo") / "run"
    shutil.copytree(trained_run["run"], run)
    out = run.parent / "tiny.zip"
    assert_ok(n2n("export", "--model", run, "--format", "bioimageio", "--out", out, "--sample", sample,
                  "--author", "Ada Lovelace", "--author", "Grace Hopper"))
    return out


def rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def test_the_package_passes_the_zoos_own_test(package: Path) -> None:
    """`bioimageio test` (bioimageio.core's command, offline) passes on every weights format of the package."""
    cli = Path(sys.executable).with_name("bioimageio")
    done = subprocess.run([str(cli), "test", str(package)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "passed" in done.stdout and "failed" not in done.stdout
    for weights in ("onnx", "torchscript"):
        assert f"Run {weights} inference" in done.stdout


def test_the_package_describes_the_model(package: Path, trained_run: dict[str, Path]) -> None:
    """Normalisation as zoo pre/post-processing, both exports, test tensors, cover, README, the card's provenance."""
    card = ModelCard.load(trained_run["run"])
    d = rdf(package)
    (inp,), (out,) = d["inputs"], d["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert inp["axes"][2]["size"]["step"] == card.size_multiple
    assert out["axes"][2]["halo"] == card.reach
    # the zoo's own ensure_dtype steps (float32) surround ours
    (pre,) = [p for p in inp["preprocessing"] if p["id"] != "ensure_dtype"]
    (post,) = [p for p in out["postprocessing"] if p["id"] != "ensure_dtype"]
    assert pre["id"] == "fixed_zero_mean_unit_variance" and post["id"] == "scale_linear"
    assert pre["kwargs"] == {"mean": card.mean, "std": card.std}
    assert post["kwargs"] == {"gain": card.std, "offset": card.mean}
    assert set(d["weights"]) == {"onnx", "torchscript"}
    assert [a["name"] for a in d["authors"]] == ["Ada Lovelace", "Grace Hopper"]
    ours = d["config"]["n2n_live"]
    assert ours["input_frames"] == 1 and ours["card"]["training"]["data"] == card.training["data"]
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        x = np.load(z.open("test_input.npy"))
        y = np.load(z.open("test_output.npy"))
    assert {"model.json", "README.md", "cover.png", "model.onnx", "model.ts"} <= names
    assert x.shape == (1, 1, 96, 96) and y.shape == (1, 1, 96, 96) and x.dtype == y.dtype == np.float32
    # the test output is what the model folder's Denoiser gives for the test input
    den = Denoiser.from_model_dir(trained_run["run"], engine="onnxruntime", precision="fp32", output_dtype="float32")
    assert np.allclose(den(x[0, 0]), y[0, 0], rtol=0, atol=1e-3 * float(np.ptp(y)))


def test_a_package_is_served_as_its_folder_is(package: Path, trained_run: dict[str, Path]) -> None:
    """n2n serve --model PACKAGE.zip: every frame bit-identical to the model folder's Denoiser (same engine, fp32);
    odd sizes too."""
    frames = [*camera_frames(4, size=64), camera_frames(1, size=96)[0][:75, :93].copy()]
    folder = Denoiser.from_model_dir(trained_run["run"], engine="onnxruntime", precision="fp32")

    with running_server(package, config(mode="lossless", engine="onnxruntime")) as server, \
            StreamClient(server.endpoints) as client:
        results, status = stream_all(client, frames)

    assert is_package(package) and server.denoiser.card.run_dir.parent.name == "zoo"
    assert [r.seq for r in results] == list(range(len(frames)))
    for frame, result in zip(frames, results):
        assert result.pixels.dtype == frame.dtype and np.array_equal(result.pixels, folder(frame))
    assert status["frames_out"] == len(frames) and status["drops"] == 0


def test_evaluate_and_denoise_take_a_package(package: Path, trained_run: dict[str, Path], tmp_path: Path) -> None:
    """n2n evaluate and n2n denoise with --model PACKAGE.zip give the model folder's figures and pixels."""
    import json

    settings = tmp_path / "evaluate.yaml"
    settings.write_text("version: 1\nengine: onnxruntime\nprecision: fp32\n")
    reports = {}
    for name, model in (("folder", trained_run["run"]), ("package", package)):
        report = tmp_path / f"{name}.json"
        assert_ok(n2n("evaluate", "--model", model, "--data", trained_run["raw"], "--reference", trained_run["truth"],
                      "--json", report, "--config", settings))
        reports[name] = json.loads(report.read_text())
        assert_ok(n2n("denoise", trained_run["raw"], "--model", model, "--out", tmp_path / f"{name}.ome.tif",
                      "--engine", "onnxruntime", "--precision", "fp32"))
    assert reports["package"]["psnr_denoised"] == reports["folder"]["psnr_denoised"]
    assert np.array_equal(tifffile.imread(tmp_path / "package.ome.tif"), tifffile.imread(tmp_path / "folder.ome.tif"))


def test_a_package_is_unpacked_once(package: Path, cache: Path, tmp_path: Path) -> None:
    """The package's folder is kept under its sha256: loaded again, the same folder; a changed package, another."""
    first = open_package(package)
    assert open_package(package) == first and first.parent == cache / "zoo"
    changed = tmp_path / "tiny.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(changed, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "rdf.yaml":
                data = data.replace(b"description: ", b"description: Edited. ", 1)
            dst.writestr(item, data)
    assert open_package(changed) != first


def edited(package: Path, tmp_path: Path, edit) -> Path:
    """The package unpacked as a folder with its rdf.yaml changed by ``edit`` (a zoo package in folder form)."""
    folder = tmp_path / "edited"
    with zipfile.ZipFile(package) as z:
        z.extractall(folder)
    d = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(d, folder)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    return folder


def _per_image(d: dict, folder: Path) -> None:
    d["inputs"][0]["preprocessing"] = [{"id": "zero_mean_unit_variance"}]


def _not_inverse(d: dict, folder: Path) -> None:
    next(p for p in d["outputs"][0]["postprocessing"] if p["id"] == "scale_linear")["kwargs"]["gain"] *= 2


def _three_channels(d: dict, folder: Path) -> None:
    d["inputs"][0]["axes"][1]["channel_names"] = ["r", "g", "b"]
    rgb = np.repeat(np.load(folder / "test_input.npy"), 3, axis=1)
    np.save(folder / "test_input.npy", rgb)
    tifffile.imwrite(folder / "sample_input.tif", rgb[0], photometric="minisblack")
    d["inputs"][0]["test_tensor"] = {"source": "test_input.npy"}
    d["inputs"][0]["sample_tensor"] = {"source": "sample_input.tif"}


def _zoo_invalid(d: dict, folder: Path) -> None:
    d["inputs"][0]["axes"][1]["channel_names"] = ["r", "g", "b"]  # the test tensors have one channel


@pytest.mark.parametrize(("edit", "says"), [
    (_per_image, "pre-processing: zero_mean_unit_variance normalises each image by its own statistics"),
    (_not_inverse, "expected the inverse of the pre-processing"),
    (_three_channels, "the input has 3 channels: expected 1 (one frame), or K consecutive frames declared"),
    (_zoo_invalid, "not a valid zoo model package"),
])
def test_a_package_it_cannot_serve_is_refused_in_one_line(package: Path, tmp_path: Path, edit, says: str) -> None:
    """What n2n-live cannot serve is named (per-image normalisation, an output not in the input's units); a package
    the zoo itself finds invalid is refused with the zoo's first complaint; n2n serve exits 2 with that line."""
    folder = edited(package, tmp_path, edit)
    assert is_package(folder)
    with pytest.raises(ZooError, match=re.escape(says)) as info:
        ModelCard.load(folder)
    assert "\n" not in str(info.value)
    result = n2n("serve", "--model", folder)
    assert result.exit_code == 2 and says.split(":")[0] in result.output and "Traceback" not in result.output


def test_fine_tuning_a_package_is_refused(package: Path) -> None:
    """Fine-tuning needs the PyTorch weights of `n2n train`: a package (exports only) says so, the server
    does not start half-way."""
    with pytest.raises(ValueError, match=r"finetune: expected a model trained by `n2n train`.*BioImage Model Zoo"):
        with running_server(package, config(finetune={"enabled": True}), finetune_worker=["true"]):
            pass


@pytest.fixture(scope="module")
def k_package(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny K = 2 run and its package (test input: the run's own 64² training frames)."""
    from trainer.run import run_training

    run = tmp_path_factory.mktemp("zoo-k") / "k2"
    run_training(TrainConfig.model_validate(tiny_train_dict(model={"input_frames": 2})), run,
                 [trained_run["raw"]], [trained_run["truth"]])
    out = run.parent / "k2.zip"
    assert_ok(n2n("export", "--model", run, "--format", "bioimageio", "--out", out))
    return run, out


def test_a_k_frame_package(k_package: tuple[Path, Path]) -> None:
    """A K-frame model's package takes its K frames as channels, oldest first, declares K, passes the zoo's model
    test, and serves frame by frame with the history as its folder does."""
    from bioimageio.core import test_model

    run, package = k_package
    d = rdf(package)
    assert d["inputs"][0]["axes"][1]["channel_names"] == ["t_minus_1", "t"]
    assert d["config"]["n2n_live"]["input_frames"] == 2
    assert d["outputs"][0]["axes"][2]["halo"] == ModelCard.load(run).reach
    with spec_files_closed():  # bioimageio's own open files, collected here
        assert test_model(package).status == "passed"
    frames = camera_frames(3, size=64)
    a = Denoiser.from_model_dir(package, engine="onnxruntime", precision="fp32")
    b = Denoiser.from_model_dir(run, engine="onnxruntime", precision="fp32")
    assert a.input_frames == 2
    for t in range(3):
        assert np.array_equal(a(frames[t], previous=frames[:t]), b(frames[t], previous=frames[:t]))


def test_a_request_of_the_wrong_shape_for_a_fixed_size_model(package: Path, tmp_path: Path) -> None:
    """A package whose axes have fixed sizes (as CAREamics exports) is served at that size; another frame size gets a
    bad_shape reply naming the size the model takes, and the server goes on."""
    def fixed(d: dict, folder: Path) -> None:
        for tensor in ("inputs", "outputs"):
            for axis in d[tensor][0]["axes"][2:]:
                axis["size"] = 96
                axis.pop("halo", None)
        d["config"].pop("n2n_live")

    folder = edited(package, tmp_path, fixed)
    card = ModelCard.load(folder)
    assert card.input.fixed_shape == [96, 96] and card.architecture.name == "bioimageio"
    frame = camera_frames(1, size=96)[0]
    with running_server(folder, config(engine="onnxruntime")) as server, StreamClient(server.endpoints) as client:
        with pytest.raises(ServerError) as info:
            client.request(frame[:64, :64].copy(), seq=1)
        result = client.request(frame, seq=2)
        status = client.status()
    assert info.value.code == "bad_shape" and "[96, 96] (the only size this model takes)" in str(info.value)
    assert result.seq == 2 and result.pixels.shape == frame.shape
    assert status["errors_by_kind"] == {"bad_shape": 1} and status["frames_out"] == 1
