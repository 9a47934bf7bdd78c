"""The model family: every architecture option builds, trains a step, exports and passes parity, and is
recorded in the model card; its FLOP count, size multiple and reach are what the streamer relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from netkit import conv_flops_measured, impulse_spread

from streamer.core.card import ModelCard
from streamer.denoiser import Denoiser
from streamer.engines import create_engine
from trainer.config import ModelConfig, TrainConfig
from trainer.export import relative_error
from trainer.run import run_training
from trainer.unet import UNet

OPTIONS: dict[str, dict[str, Any]] = {
    "filters per level": {"depth": 2, "filters": [4, 12, 16]},
    "depthwise-separable": {"depth": 2, "base_filters": 8, "block": "dsconv"},
    "additive skips": {"depth": 3, "filters": [4, 8, 8, 16], "skip": "add"},
    "projected skips": {"depth": 2, "filters": [4, 8, 16], "skip": "project"},
    "pixel-unshuffle stem": {"depth": 1, "base_filters": 8, "stem": "unshuffle"},
    "all at once": {"depth": 2, "filters": [8, 8, 16], "block": "dsconv", "skip": "add", "stem": "unshuffle"},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=list(OPTIONS))
def test_option_keeps_shape_and_counts_its_flops(options: dict[str, Any]) -> None:
    """Any frame size in, the same size out; the analytic FLOP count equals a forward pass's; the
    reach bounds how far a pixel's output looks (an impulse moves nothing beyond it)."""
    torch.manual_seed(0)
    net = UNet(**options).eval()
    for shape in [(1, 1, 37, 53), (2, 1, 64, 64)]:
        with torch.no_grad():
            assert net(torch.randn(*shape)).shape == shape
    assert net.flops_per_pixel() == pytest.approx(conv_flops_measured(net))
    assert net.size_multiple == 2 ** options["depth"] * (2 if options.get("stem") == "unshuffle" else 1)
    rows, cols, centre = impulse_spread(net)
    assert rows.numel() > 0
    assert (rows - centre).abs().max() <= net.reach and (cols - centre).abs().max() <= net.reach


def test_filters_must_match_depth() -> None:
    """A filters list of the wrong length is refused, in the network and in the config, naming both."""
    with pytest.raises(ValueError, match="expected 3 filter counts for depth 2"):
        UNet(depth=2, filters=[8, 16])
    with pytest.raises(ValueError, match=r"model.filters needs depth \+ 1 = 4 values"):
        ModelConfig(depth=3, filters=[8, 16, 32])


def test_unshuffle_patch_must_fit_the_larger_multiple() -> None:
    """With the unshuffle stem the patch size must be a multiple of 2**(depth + 1)."""
    with pytest.raises(ValueError, match="multiple of the model's size multiple 8"):
        TrainConfig.model_validate({"model": {"depth": 2, "stem": "unshuffle"}, "data": {"patch_size": 36}})


@pytest.mark.parametrize("options", OPTIONS.values(), ids=list(OPTIONS))
def test_option_trains_exports_and_serves(tmp_path: Path, tiny_config, sim_tiff, options: dict[str, Any]) -> None:
    """Each option trains a step, exports ONNX and TorchScript within the parity limit, is recorded
    in the card, and the served output (OpenVINO fp32 through the Denoiser) equals PyTorch's."""
    config = tiny_config(model=options, data={"patch_size": 32}, optim={"epochs": 1, "steps_per_epoch": 2})
    card = run_training(config, tmp_path / "run", [sim_tiff[0]])

    arch = card.architecture
    assert (arch.block, arch.stem, arch.skip) == (options.get("block", "conv"), options.get("stem", "none"),
                                                  options.get("skip", "concat"))
    net = UNet(**{k: getattr(arch, k) for k in ("depth", "base_filters", "filters", "block", "stem", "skip",
                                                 "residual")}).eval()
    assert arch.flops_per_pixel == pytest.approx(net.flops_per_pixel())
    assert card.size_multiple == net.size_multiple and card.tile.overlap == net.reach == card.reach
    for fmt in ("onnx", "torchscript"):
        assert card.artifacts[fmt].parity_rel_error < 1e-4

    loaded = ModelCard.load(tmp_path / "run")
    frame = np.random.default_rng(0).integers(80, 400, (45, 61)).astype(np.uint16)
    den = Denoiser(loaded, create_engine("openvino", loaded, precision="fp32", num_threads=1),
                   output_dtype="float32")
    served = den(frame)
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    net.load_state_dict(weights["state_dict"])
    x = ((frame.astype(np.float32) - loaded.mean) / loaded.std)[None, None]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()[0, 0] * loaded.std + loaded.mean
    assert relative_error(served, ref) < 1e-5


@pytest.mark.parametrize("filters", [[4, 16, 32, 64], [8, 8, 16, 16]])
def test_subpixel_decoder_is_the_same_network(filters: list[int]) -> None:
    """The thin networks' sub-pixel decoder computes CARE's upsample-concatenate-convolve exactly, with the
    same parameters (a checkpoint loads either way), also in TorchScript."""
    torch.manual_seed(0)
    net = UNet(depth=3, filters=filters).eval()
    assert all(up.subpixel for up in net.up)  # thin at full resolution: the fast form is on
    plain = UNet(depth=3, filters=filters).eval()
    plain.load_state_dict(net.state_dict())
    for up in plain.up:
        up.subpixel = False
    x = torch.randn(2, 1, 45, 61)

    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.jit.script(net)(x), plain(x), rtol=1e-5, atol=1e-5)
    assert not any(up.subpixel for up in UNet(depth=2, base_filters=32).up)  # the wide default keeps CARE's form
