"""The CARE-style U-Net: any frame size in, same size out; residual output; bad arguments."""

from __future__ import annotations

import pytest
import torch

from trainer.unet import UNet


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 1, 64, 64), (1, 1, 17, 100), (1, 1, 8, 9)])
def test_output_shape_equals_input_shape(depth: int, shape: tuple[int, ...]) -> None:
    """Frames of odd and even sizes come out with exactly the input shape."""
    torch.manual_seed(0)
    net = UNet(depth=depth, base_filters=4).eval()
    x = torch.randn(*shape)

    with torch.no_grad():
        y = net(x)

    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("depth", [1, 2])
def test_padding_does_not_change_the_valid_region_much(depth: int) -> None:
    """Cropping a divisible frame to an odd size gives the same output away from the border."""
    torch.manual_seed(1)
    net = UNet(depth=depth, base_filters=4).eval()
    x = torch.randn(1, 1, 64, 64)

    with torch.no_grad():
        full = net(x)
        cropped = net(x[..., :61, :59])

    inner = (slice(None), slice(None), slice(0, 61 - 16), slice(0, 59 - 16))
    torch.testing.assert_close(cropped[inner], full[..., :61, :59][inner], rtol=1e-4, atol=1e-5)


def _zero(net: UNet) -> UNet:
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    return net.eval()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_residual_with_zero_weights_is_identity(depth: int) -> None:
    """With residual=True and all weights zero, the network returns its input exactly."""
    net = _zero(UNet(depth=depth, base_filters=4, residual=True))
    x = torch.randn(2, 1, 37, 53)

    with torch.no_grad():
        y = net(x)

    torch.testing.assert_close(y, x, rtol=0, atol=0)


def test_non_residual_with_zero_weights_is_zero() -> None:
    """With residual=False and all weights zero, the output is zero (no hidden skip)."""
    net = _zero(UNet(depth=2, base_filters=4, residual=False))

    with torch.no_grad():
        y = net(torch.randn(1, 1, 32, 40))

    assert torch.count_nonzero(y) == 0


def test_channels_double_per_level() -> None:
    """Attributes and channel counts follow depth and base_filters."""
    net = UNet(depth=3, base_filters=6)

    assert net.size_multiple == 8
    assert [blk[0].out_channels for blk in net.down] == [6, 12, 24]
    assert net.bottom[0].out_channels == 48
    assert net.head.out_channels == 1 and net.down[0][0].in_channels == 1


def test_batch_items_are_independent() -> None:
    """Each frame of a batch is denoised independently of the others."""
    torch.manual_seed(2)
    net = UNet(depth=2, base_filters=4).eval()
    x = torch.randn(3, 1, 32, 32)

    with torch.no_grad():
        batch = net(x)
        single = net(x[1:2])

    torch.testing.assert_close(batch[1:2], single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("depth", [0, -1])
def test_invalid_depth_rejected(depth: int) -> None:
    """Depth below 1 raises ValueError naming the depth."""
    with pytest.raises(ValueError, match=f"depth must be >= 1, got {depth}"):
        UNet(depth=depth)


def test_invalid_base_filters_rejected() -> None:
    """base_filters below 1 raises ValueError."""
    with pytest.raises(ValueError, match="base_filters must be >= 1"):
        UNet(depth=2, base_filters=0)


@pytest.mark.gpu
def test_cuda_output_matches_cpu() -> None:
    """On a CUDA GPU the U-Net gives the CPU result (fp32, loose tolerance for cuDNN)."""
    torch.manual_seed(3)
    net = UNet(depth=2, base_filters=8).eval()
    x = torch.randn(1, 1, 45, 61)

    with torch.no_grad():
        cpu = net(x)
        gpu = net.cuda()(x.cuda()).cpu()

    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)
