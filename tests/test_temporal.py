"""Causal multi-frame Noise2Noise (``model.input_frames`` K > 1): training windows, the network, exports, the
history rule (streamer/core/history.py) in the Denoiser, the server (real sockets on 127.0.0.1) and evaluation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CAMERA, tiny_train_dict
from netkit import conv_flops_measured, impulse_spread
from serverkit import camera_frames, config
from waiting import wait_for

from streamer.client import StreamClient
from streamer.core.card import ModelCard
from streamer.core.history import FrameHistory, Histories, motion_score
from streamer.server import Server, load_denoiser, running_server
from streamer.sources import SimulatedCameraConfig, simulate_stack
from trainer.config import EvaluateConfig, TrainConfig
from trainer.evaluate import evaluate
from trainer.inference import load_weights
from trainer.pairs import PairSampler, n2n_pair_indices, n2n_window_indices, window
from trainer.unet import UNet

K = 3


@pytest.fixture(scope="module")
def k_run(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny K = 3 run trained on the session's simulated frames (ONNX and TorchScript exports)."""
    from trainer.run import run_training

    out = tmp_path_factory.mktemp("temporal") / "k3"
    cfg = TrainConfig.model_validate(tiny_train_dict(model={"input_frames": K}))
    run_training(cfg, out, [trained_run["raw"]], [trained_run["truth"]])
    return out


# --- training windows and the network ------------------------------------------------------------------
def test_windows_repeat_the_oldest_frame_and_reverse_time() -> None:
    assert window(0, 3) == [0, 0, 0] and window(1, 3) == [0, 0, 1] and window(5, 3) == [3, 4, 5]
    assert np.array_equal(n2n_window_indices(4, 1), n2n_pair_indices(4))  # K = 1: the pairs as always
    rows = n2n_window_indices(4, 2).tolist()
    assert rows[:3] == [[0, 0, 1], [0, 1, 2], [1, 2, 3]]  # forward: t−1, t → t+1
    assert rows[3:] == [[3, 3, 2], [3, 2, 1], [2, 1, 0]]  # reversed: the frame next to the target last
    assert len(n2n_window_indices(4, 2, reverse=False)) == 3


def test_sampler_gives_k_frame_windows() -> None:
    stack = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 32, 32), np.float32)
    x, y = PairSampler([stack], 16, [32], seed=1, k=3, reverse=False).sample(8)
    assert x.shape == (8, 3, 16, 16) and y.shape == (8, 1, 16, 16)
    for xb, yb in zip(x, y):  # constant frames: the window's values are its frame indices
        t = int(yb[0, 0, 0]) - 1
        assert [int(v) for v in xb[:, 0, 0]] == window(t, 3)


def test_k_frame_unet_adds_its_residual_to_the_newest_frame() -> None:
    net = UNet(depth=1, base_filters=4, input_frames=K).eval()
    torch.nn.init.zeros_(net.head.weight)
    torch.nn.init.zeros_(net.head.bias)
    x = torch.randn(2, K, 16, 18)
    with torch.no_grad():
        assert torch.equal(net(x), x[:, -1:])
    assert net.architecture["input_frames"] == K
    assert "input_frames" not in UNet(depth=1, base_filters=4).architecture  # K = 1: recorded as before


def test_shared_frame_stem_gives_every_frame_the_same_features() -> None:
    """frame_stem S: one 3×3 convolution (and ReLU) with the same weights on each frame, K·S channels into the first
    level, frame by frame in order; its weights do not grow with K."""
    torch.manual_seed(0)
    net = UNet(depth=2, filters=[4, 8, 8], input_frames=K, frame_stem=3).eval()
    seen: list[torch.Tensor] = []
    net.down[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, K, 16, 20)  # sizes of the size multiple: no padding
    with torch.no_grad():
        net(x)
        per_frame = torch.cat([torch.relu(net.stem_conv(x[:, i:i + 1])) for i in range(K)], dim=1)
    assert seen[0].shape == (2, 3 * K, 16, 20)
    assert torch.allclose(seen[0], per_frame, atol=1e-6)
    wider = UNet(depth=2, filters=[4, 8, 8], input_frames=5, frame_stem=3)
    assert net.stem_conv.weight.shape == wider.stem_conv.weight.shape
    assert net.architecture["frame_stem"] == 3 and "frame_stem" not in UNet(depth=1, base_filters=4).architecture


def test_mixed_residual_starts_at_the_mean_and_a_frame_alone_is_its_own_mix() -> None:
    net = UNet(depth=1, base_filters=4, input_frames=K, residual_frames="mix").eval()
    torch.nn.init.zeros_(net.head.weight)
    torch.nn.init.zeros_(net.head.bias)
    x = torch.randn(2, K, 16, 18)
    alone = x[:, -1:].repeat(1, K, 1, 1)
    with torch.no_grad():
        assert torch.allclose(net(x), x.mean(dim=1, keepdim=True), atol=1e-6)
        net.mix.copy_(torch.tensor([0.1, 0.3, 0.6]))  # any learned weights that sum to one
        assert torch.allclose(net(alone), x[:, -1:], atol=1e-6)
    assert net.architecture["residual_frames"] == "mix"


@pytest.mark.parametrize("front", [{"frame_stem": 4}, {"residual_frames": "mix"},
                                   {"frame_stem": 2, "residual_frames": "mix", "stem": "unshuffle"}],
                         ids=["frame stem", "mixed residual", "both, unshuffled"])
def test_k_frame_front_ends_count_their_flops_and_keep_their_reach(front: dict[str, object]) -> None:
    """The analytic FLOP count equals a forward pass's convolutions (plus 2 per frame for the mix); a pixel's
    output looks no further than the reach the tiler's margin is made of."""
    torch.manual_seed(0)
    net = UNet(depth=2, filters=[4, 8, 16], input_frames=K, **front).eval()  # type: ignore[arg-type]
    mix = 2 * K if front.get("residual_frames") == "mix" else 0
    assert net.flops_per_pixel() == pytest.approx(conv_flops_measured(net) + mix)
    rows, cols, centre = impulse_spread(net, frame=0)  # the oldest frame: it goes through the stem too
    assert rows.numel() > 0
    assert (rows - centre).abs().max() <= net.reach and (cols - centre).abs().max() <= net.reach


def test_sampler_repeats_the_newest_frame_in_a_share_of_windows() -> None:
    """repeated: that share of windows is the frame next to the target K times (a frame alone, as served)."""
    stack = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((20, 32, 32), np.float32)
    for share, low, high in [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.3, 0.2, 0.4)]:
        x, y = PairSampler([stack], 16, [32], seed=2, k=3, reverse=False, repeated=share).sample(400)
        frames, t = x[:, :, 0, 0], y[:, 0, 0, 0] - 1  # constant frames: values are frame indices; forward: t → t+1
        assert np.all(frames[:, -1] == t)  # the newest input is always the frame next to the target
        later = t >= 1  # (the window of frame 0 is frame 0 three times anyway)
        alone = np.all(frames == frames[:, -1:], axis=1)[later]
        assert low <= alone.mean() <= high, (share, alone.mean())
    with pytest.raises(ValueError, match="fraction"):
        PairSampler([stack], 16, [32], k=3, repeated=1.5)


def test_single_frame_card_and_config_are_unchanged(trained_run: dict[str, Path]) -> None:
    """K = 1 writes nothing new (old cards and configs load as K = 1)."""
    card = json.loads((trained_run["run"] / "model.json").read_text())
    assert "input_frames" not in card["architecture"] and "input_frames" not in card["training"]["config"]["model"]
    assert "reversed_pairs" not in card["training"]["config"]["data"]
    assert ModelCard.load(trained_run["run"]).input_frames == 1
    assert TrainConfig().model.input_frames == 1


def test_k_frame_run_exports_and_records_k(k_run: Path) -> None:
    card = ModelCard.load(k_run)
    assert card.input_frames == K and card.architecture.input_frames == K
    for fmt in ("onnx", "torchscript"):
        art = card.artifacts[fmt]
        assert art.parity_rel_error is not None and art.parity_rel_error < 1e-4
        assert art.layout.startswith(f"N{K}HW")
    import onnx

    dims = onnx.load(str(card.artifact("onnx"))).graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == K


# --- the history rule ----------------------------------------------------------------------------------------
def test_history_resets_on_seq_gap_shape_dtype_and_motion() -> None:
    frames = list(camera_frames(6, size=32))
    resets: list[str] = []
    hist = FrameHistory(K, on_reset=resets.append)
    assert hist.previous(frames[0], 0) == []  # the first frame: nothing before it
    hist.push(frames[0], 0)
    hist.push(frames[1], 1)
    assert [p is f for p, f in zip(hist.previous(frames[2], 2), frames[:2])] == [True, True]
    hist.push(frames[2], 2)
    assert hist.previous(frames[3], 5) == [] and resets == ["seq_gap"]  # frames 3, 4 lost
    hist.push(frames[3], 5)
    assert hist.previous(frames[4][:16], 6) == [] and resets[-1] == "shape"
    hist.push(frames[4][:16], 6)
    assert hist.previous(frames[4][:16].astype(np.float32), 7) == [] and resets[-1] == "dtype"
    hist.push(frames[0], None)
    moved = np.roll(frames[1], 3, axis=1)
    assert motion_score(frames[1], frames[0]) < 1.5 < motion_score(moved, frames[0])
    assert hist.previous(moved, None) == [] and hist.motion_fallbacks == 1  # alone, this frame only
    assert len(hist.previous(frames[1], None)) == 1
    hist.skip(frames[2], None)  # a frame that was not denoised still counts as history
    assert len(hist) == 2 and hist.previous(frames[3], None)[1] is frames[2]
    assert hist.resets == {"seq_gap": 1, "shape": 1, "dtype": 1}


def test_histories_keep_streams_apart_and_bounded() -> None:
    evicted: list[str] = []
    streams = Histories(K, max_streams=2, on_reset=evicted.append)
    a = camera_frames(1, size=16)[0]
    for key in ("a", "b", "c"):
        streams.get(key).push(a, 0)
    assert len(streams) == 2 and evicted == ["evicted"]


# --- the Denoiser, evaluation and the server --------------------------------------------------------------
def test_first_frame_is_denoised_from_itself_repeated(k_run: Path) -> None:
    den = load_denoiser(k_run, config())
    frame = camera_frames(1)[0]
    net, norm = load_weights(k_run)
    with torch.no_grad():
        expected = norm.denormalize(net(torch.from_numpy(norm.normalize(np.stack([frame] * K))[None]))[0, 0].numpy())
    out = den(frame)
    assert out.shape == frame.shape and out.dtype == frame.dtype
    assert np.abs(out.astype(np.float32) - expected).max() <= 0.5 + 1e-3  # rounded to the camera's dtype
    assert not np.array_equal(out, frame)


def test_lossless_k_frames_through_the_server_equal_offline_evaluation(k_run: Path) -> None:
    """Two interleaved streams (meta.stream) of K = 3 through a real lossless server: every frame is
    bit-identical to `n2n evaluate`'s Denoiser on that stream alone; a gap in one stream resets only it."""
    a, b = camera_frames(8, seed=31), camera_frames(8, seed=32)
    offline = EvaluateConfig(engine="openvino", precision="fp32", motion_threshold=None)  # as the server below
    offline_a = evaluate(k_run, a, a, offline)[1]
    offline_b = evaluate(k_run, b, b, offline)[1]
    cfg = config(mode="lossless", engine="openvino", motion_threshold=None)  # the camera dtype, as evaluate

    with running_server(k_run, cfg) as server, StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for i in range(8):
            client.send(a[i], seq=i, meta={"stream": "a"})
            client.send(b[i], seq=100 + i, meta={"stream": "b"})
        results = [client.receive() for _ in range(16)]
        client.send(a[0], seq=20, meta={"stream": "a"})  # a gap in stream a: its history restarts
        gap = client.receive()
        status = client.status()

    got_a = [r.pixels for r in results if r.header["meta"]["stream"] == "a"]
    got_b = [r.pixels for r in results if r.header["meta"]["stream"] == "b"]
    assert all(np.array_equal(g, o) for g, o in zip(got_a, offline_a)) and len(got_a) == 8
    assert all(np.array_equal(g, o) for g, o in zip(got_b, offline_b)) and len(got_b) == 8
    assert np.array_equal(gap.pixels, offline_a[0])  # denoised as a first frame
    assert status["history_resets"] == {"seq_gap": 1}
    assert status["history_short"] == 2 * (K - 1) + 1


def test_live_mode_keeps_dropped_frames_as_history(k_run: Path) -> None:
    """Frames live mode drops still become history: after a burst of 5, the newest is denoised with the two
    dropped frames before it, not as a first frame."""
    frames = camera_frames(5, seed=41)
    server = Server(k_run, config(mode="live", motion_threshold=None))
    server.start()
    try:
        with StreamClient(server.endpoints) as client:
            client.subscribe()
            for i, f in enumerate(frames):
                client.send(f, seq=i)
            wait_for(lambda: (server._drain_input(), server.stats.frames_in)[1] == 5, "the burst to arrive")
            assert len(server.intake.queue) == 1 and server.stats.drops == 4
            thread = threading.Thread(target=server._loop, daemon=True)
            thread.start()
            client.wait_subscribed()
            try:
                result = client.receive()
            finally:
                server.stop()
                thread.join(10)
    finally:
        server.close()
    expected = load_denoiser(k_run, config())(frames[4], previous=frames[2:4])
    assert result.seq == 4 and np.array_equal(result.pixels, expected)
    assert server.stats.history_short == 0 and not server.stats.history_resets


def test_swap_and_shape_change_reset_the_history(k_run: Path, trained_run: dict[str, Path]) -> None:
    frames = camera_frames(3)
    small = camera_frames(1, size=32)[0]
    with running_server(k_run, config(mode="lossless", models_root=str(k_run.parent.parent),
                                      motion_threshold=None)) as server, StreamClient(server.endpoints) as client:
        client.wait_subscribed()
        for i, f in enumerate(frames):
            client.send(f, seq=i)
        client.send(small, seq=3)
        [client.receive() for _ in range(4)]
        assert client.status()["history_resets"] == {"shape": 1}
        client.control("swap", model=str(k_run))
        client.send(frames[0], seq=4)
        first = client.receive()
        status = client.status()
    assert status["history_resets"] == {"shape": 1, "swap": 1}
    assert np.array_equal(first.pixels, load_denoiser(k_run, config())(frames[0]))


def test_request_path_keeps_a_history_per_caller(k_run: Path) -> None:
    frames = camera_frames(3, seed=51)
    den = load_denoiser(k_run, config())
    with running_server(k_run, config(motion_threshold=None)) as server, StreamClient(server.endpoints) as caller:
        replies = [caller.request(f, seq=i) for i, f in enumerate(frames)]
    expected = [den(frames[0]), den(frames[1], previous=frames[:1]), den(frames[2], previous=frames[:2])]
    assert all(np.array_equal(r.pixels, e) for r, e in zip(replies, expected))


def test_motion_check_falls_back_to_one_frame_under_drift(k_run: Path) -> None:
    """Drift of 2 px/frame on the simulated camera trips the motion check every frame (each is denoised alone,
    counted); a still sample never."""
    def stack(drift: float) -> np.ndarray:
        cam = SimulatedCameraConfig(**{**TINY_CAMERA, "drift_px_per_frame": (0.0, drift), "seed": 4})
        return simulate_stack(cam, 5)[0]

    still, moving = stack(0.0), stack(2.0)
    assert max(motion_score(still[i], still[i - 2]) for i in range(2, 5)) < 1.5
    assert min(motion_score(moving[i], moving[i - 2]) for i in range(2, 5)) > 1.5
    # 64² frames give few 4×4 blocks: their scores are noisier than at 512² (the default 1.25 is for those)
    cfg = EvaluateConfig(engine="openvino", precision="fp32", motion_threshold=1.5)
    report, den = evaluate(k_run, moving, moving, cfg)
    assert report["history"]["motion_fallbacks"] == 4 and report["history"]["short"] == 1
    alone = load_denoiser(k_run, config(engine="openvino"))  # the camera dtype, as evaluate scores
    assert all(np.array_equal(den[i], alone(moving[i])) for i in range(5))
    assert evaluate(k_run, still, still, cfg)[0]["history"] == {"resets": {}, "short": 2, "motion_fallbacks": 0}


def test_n2n_denoise_applies_the_history_rule_along_t(k_run: Path, tmp_path: Path) -> None:
    """`n2n denoise` of a TCYX stack in tasks of 3 planes (histories cross task boundaries): each channel's
    time series is what `n2n evaluate` gives on it; a Z stack's planes are denoised each alone."""
    from streamer.datasets import open_dataset
    from streamer.offline import denoise
    from streamer.offline.config import DenoiseConfig

    t, c = 5, 2
    series = [camera_frames(t, seed=61 + i) for i in range(c)]
    tcyx = np.stack(series, axis=1)  # (T, C, Y, X)
    src = tmp_path / "tc.ome.tif"
    import tifffile

    tifffile.imwrite(src, tcyx, ome=True, metadata={"axes": "TCYX"})
    plane_mib = tcyx[0, 0].nbytes / 2**20
    cfg = DenoiseConfig(precision="fp32", threads=1, engine="openvino", dtype="float32", chunk_mib=3 * plane_mib)
    denoise(src, k_run, tmp_path / "tc.zarr", cfg)
    reader = open_dataset(tmp_path / "tc.zarr")
    out = reader.read(0, t * c).reshape(t, c, *tcyx.shape[-2:])
    reader.close()
    for i in range(c):
        expected = evaluate(k_run, series[i], series[i], EvaluateConfig(engine="openvino", precision="fp32",
                                                                        output_dtype="float32"))[1]
        assert np.array_equal(out[:, i], expected)

    zyx = tmp_path / "z.ome.tif"
    tifffile.imwrite(zyx, series[0], ome=True, metadata={"axes": "ZYX"})
    denoise(zyx, k_run, tmp_path / "z.zarr", cfg)
    reader = open_dataset(tmp_path / "z.zarr")
    zout = reader.read(0, t)
    reader.close()
    den = load_denoiser(k_run, config(engine="openvino", output_dtype="float32"))
    assert all(np.array_equal(zout[i], den(series[0][i])) for i in range(t))


def test_drift_benchmark_trains_the_shipped_k_frame_network() -> None:
    """bench.drift's K-frame models take configs/train_temporal.yaml's network and training windows: its --set
    overrides on the real-time preset give that config's model and windows, at the K asked for."""
    from bench.drift import _temporal_settings
    from n2n.command import parse_settings
    from streamer.core.config import load_config

    root = Path(__file__).resolve().parent.parent
    sets, k = _temporal_settings(root / "configs" / "train_temporal.yaml")
    shipped = load_config(TrainConfig, root / "configs" / "train_temporal.yaml")
    assert k == shipped.model.input_frames > 1
    made = load_config(TrainConfig, root / "configs" / "train_fast.yaml",
                       **{**parse_settings(sets), "model.input_frames": k})
    assert made.model == shipped.model
    assert (made.data.repeated_windows, made.data.reversed_pairs) == (shipped.data.repeated_windows,
                                                                      shipped.data.reversed_pairs) != (0.0, True)
