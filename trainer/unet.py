"""CARE-style 2D U-Net with a residual output (Weigert et al. 2018, Nat. Methods)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net for single-channel frames.

    ``depth`` pooling levels, ``base_filters`` channels at full resolution, doubled at each
    level. With ``residual=True`` the network predicts a correction added to its input, as
    CARE does. Frames of any size >= ``2**depth`` are accepted: sizes not divisible by
    ``2**depth`` are reflect-padded and the output is cropped back (output shape == input shape).
    """

    def __init__(self, depth: int = 2, base_filters: int = 32, residual: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"U-Net depth must be >= 1, got {depth}")
        if base_filters < 1:
            raise ValueError(f"U-Net base_filters must be >= 1, got {base_filters}")
        self.depth = depth
        self.base_filters = base_filters
        self.residual = residual
        self.size_multiple: int = 2**depth
        """Frame sizes divisible by this run without padding."""
        chans = [base_filters * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = 1
        for c in chans[:-1]:
            self.down.append(_conv_block(cin, c))
            cin = c
        self.bottom = _conv_block(chans[-2], chans[-1])
        self.up = nn.ModuleList()
        for lvl in reversed(range(depth)):
            self.up.append(_conv_block(chans[lvl + 1] + chans[lvl], chans[lvl]))
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = self.size_multiple
        # Always pad (by 0 when already divisible): no shape-dependent branch, so the
        # exported ONNX graph keeps dynamic height and width. Needs h, w >= 2**depth.
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        skips: list[torch.Tensor] = []
        y = x
        for block in self.down:
            y = block(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bottom(y)
        for i, block in enumerate(self.up):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = block(torch.cat([y, skips[len(skips) - 1 - i]], dim=1))
        y = self.head(y)
        if self.residual:
            y = y + x
        return y[..., :h, :w]
