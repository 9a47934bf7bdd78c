"""Frames that are each the mean of N camera readouts (a confocal's line or frame averaging, a camera's on-board
averaging): the model's noise model is divided by N, so an average is denoised as the N-times exposure it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import train_tiny, write_tiff

from streamer.core.card import Normalization
from streamer.denoiser import Denoiser
from streamer.sources import SimulatedCameraConfig, simulate_stack

CAMERA = SimulatedCameraConfig(height=96, width=96, exposure_ms=10.0, seed=7)  # gain 2 ADU/e-, offset 100, read 3.2
NORM = Normalization(kind="anscombe", mean=0.0, std=1.7, gain=2.0, offset=100.0, read_noise=3.2)


def _averages(raw: np.ndarray, n: int) -> np.ndarray:
    return raw[: len(raw) // n * n].astype(np.float32).reshape(-1, n, *raw.shape[1:]).mean(axis=1)


def test_an_average_is_stabilised_as_the_exposure_it_is() -> None:
    """The mean of 4 readouts, stabilised with the noise model divided by 4, is exactly what the network sees for
    their sum (a 4-times exposure whose read noise is that of 4 readouts), and it comes back as the sum's mean / 4."""
    raw, _ = simulate_stack(CAMERA, 8)
    sums = raw.astype(np.float32).reshape(2, 4, 96, 96).sum(axis=1) - 3 * np.float32(NORM.offset)
    avg = _averages(raw, 4)
    by_sum = NORM.model_copy(update={"read_noise": 2 * NORM.read_noise})  # 4 readouts' read noise: sqrt(4) times
    np.testing.assert_allclose(NORM.averaged(4).normalize(avg), by_sum.normalize(sums), rtol=1e-5, atol=1e-4)
    y = by_sum.normalize(sums)
    np.testing.assert_allclose(NORM.averaged(4).denormalize(y) - NORM.offset, (by_sum.denormalize(y) - NORM.offset) / 4,
                               rtol=1e-5, atol=1e-3)
    assert NORM.averaged(1) is NORM


def test_averaged_noise_is_unit_variance_only_when_said() -> None:
    """Stabilised with the single readout's model, an average of 4 has half the noise the network was trained on
    (it would smooth it as if it were that much brighter); with --averaged 4 the noise is unit variance again."""
    raw, _ = simulate_stack(CAMERA.model_copy(update={"height": 64, "width": 64}), 160)
    avg = _averages(raw, 4)  # 40 averages of 4
    spread = {n: float((np.stack([NORM.averaged(n).normalize(f) for f in avg]) * NORM.std).std(axis=0).mean())
              for n in (1, 4)}
    assert spread[4] == pytest.approx(1.0, abs=0.12)
    assert spread[1] == pytest.approx(0.5, abs=0.08)


def test_a_mean_std_model_cannot_serve_averages(trained_run: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"camera.s noise model .* averaged over 4 readouts"):
        Denoiser.from_model_dir(trained_run["run"], precision="fp32", averaged=4)
    with pytest.raises(ValueError, match="n >= 1"):
        NORM.averaged(0)


@pytest.fixture(scope="module")
def anscombe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw, truth = simulate_stack(CAMERA, 8)
    run, card = train_tiny(tmp_path_factory.mktemp("averaged"), raw, truth,
                           data={"normalization": "anscombe", "patch_size": 32, "val_pairs": 2})
    assert card.normalization.kind == "anscombe"
    return run


def _n2n(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "n2n", *args], capture_output=True, text=True, timeout=300)


def test_denoise_and_evaluate_take_averaged_frames(anscombe_run: Path, tmp_path: Path) -> None:
    """n2n denoise --averaged 4 writes what the Denoiser with averaged=4 gives (not what it gives a single readout),
    records it, and n2n evaluate --averaged 4 scores those same pixels and says so."""
    raw, truth = simulate_stack(CAMERA.model_copy(update={"seed": 8}), 12)
    avg = np.rint(_averages(raw, 4)).astype(np.uint16)  # as a camera writes its averages
    src = write_tiff(tmp_path / "avg.ome.tif", avg)
    ref = write_tiff(tmp_path / "truth.ome.tif", truth[::4])
    import tifffile

    done = _n2n("denoise", str(src), "--model", str(anscombe_run), "--out", str(tmp_path / "den.ome.tif"),
                "--averaged", "4", "--precision", "fp32", "--json", str(tmp_path / "den.json"))
    assert done.returncode == 0, done.stderr
    written = tifffile.imread(tmp_path / "den.ome.tif")
    den4 = Denoiser.from_model_dir(anscombe_run, precision="fp32", averaged=4)
    den1 = Denoiser.from_model_dir(anscombe_run, precision="fp32")
    np.testing.assert_array_equal(written, np.stack([den4(f) for f in avg]))
    assert not np.array_equal(written, np.stack([den1(f) for f in avg]))
    assert json.loads((tmp_path / "den.json").read_text())["averaged"] == 4

    scored = _n2n("evaluate", "--model", str(anscombe_run), "--data", str(src), "--reference", str(ref),
                  "--averaged", "4", "--precision", "fp32", "--json", str(tmp_path / "eval.json"))
    assert scored.returncode == 0, scored.stderr
    assert "frames averaged over 4 readouts" in scored.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["averaged"] == 4


def test_averaged_with_a_mean_std_model_is_one_line(trained_run: dict[str, Path], tmp_path: Path) -> None:
    done = _n2n("denoise", str(trained_run["raw"]), "--model", str(trained_run["run"]), "--out",
                str(tmp_path / "den.ome.tif"), "--averaged", "4")
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "noise model" in lines[0] and "averaged over 4" in lines[0], done.stderr
    assert not (tmp_path / "den.ome.tif").exists()


def test_a_resumed_denoise_keeps_its_averaging(anscombe_run: Path, tmp_path: Path) -> None:
    """A run started with --averaged 4 and resumed without it would denoise the rest as single readouts: refused,
    and the finished record says how the planes were denoised."""
    import zarr

    from streamer.datasets import DatasetError
    from streamer.offline import DenoiseInterrupted, denoise
    from streamer.offline.config import DenoiseConfig

    raw, _ = simulate_stack(CAMERA.model_copy(update={"seed": 9}), 32)
    src = write_tiff(tmp_path / "avg.ome.tif", np.rint(_averages(raw, 4)).astype(np.uint16))
    out = tmp_path / "den.zarr"
    cfg = DenoiseConfig(chunk_mib=96 * 96 * 2 / 2**20, precision="fp32", threads=1, averaged=4)
    seen: list[int] = []

    def stop_after_one(done: int, total: int, stage: str) -> None:
        seen.append(done)
        if len(seen) > 1:
            raise KeyboardInterrupt

    with pytest.raises(DenoiseInterrupted):
        denoise(src, anscombe_run, out, cfg, stop_after_one)
    with pytest.raises(DatasetError, match=r"other settings: averaged 4 \(now 1\)"):
        denoise(src, anscombe_run, out, cfg.model_copy(update={"averaged": 1}))
    summary = denoise(src, anscombe_run, out, cfg)
    assert summary["planes_resumed"] >= 1 and summary["averaged"] == 4
    assert zarr.open_group(out, mode="r").attrs["n2n-live"]["denoised_planes"]["averaged"] == 4


def test_a_server_says_its_averaging_and_refuses_to_fine_tune_averages(anscombe_run: Path) -> None:
    from streamer.server import ServeConfig, Server

    server = Server(anscombe_run, ServeConfig(precision="fp32", num_threads=1, averaged=4))
    try:
        assert server.denoiser.averaged == 4 and server.denoiser.info()["averaged"] == 4
    finally:
        server.close()
    tuned = Server(anscombe_run, ServeConfig.model_validate({"precision": "fp32", "num_threads": 1, "averaged": 4,
                                                             "finetune": {"enabled": True}}))
    with pytest.raises(ValueError, match=r"averaged over 4 .* without --finetune"):
        tuned.start()
