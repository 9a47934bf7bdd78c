"""Checks on a U-Net itself, for the model-family and multi-frame tests: its convolutions' FLOPs counted by PyTorch
on a real forward pass, and how far an impulse in its input moves its output."""

from __future__ import annotations

import torch

from trainer.unet import UNet


def conv_flops_measured(net: UNet, size: int = 64) -> float:
    """FLOPs of the convolutions counted by PyTorch on a real forward pass, per pixel."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, net.input_frames, size, size))
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op)) / size**2


def impulse_spread(net: UNet, frame: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows and columns of the output that change when one pixel in the middle of input frame ``frame`` is
    poked, and where it was: on a random frame of side 4 × the reach."""
    side = 4 * net.reach
    x = torch.randn(1, net.input_frames, side, side)
    poked = x.clone()
    poked[:, frame, side // 2, side // 2] += 10.0
    with torch.no_grad():
        diff = (net(poked) - net(x)).abs()[0, 0]
    rows, cols = torch.nonzero(diff > 1e-6, as_tuple=True)
    return rows, cols, side // 2
