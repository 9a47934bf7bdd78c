"""The model family: CARE-style 2D U-Nets with a residual output (Weigert et al. 2018, Nat. Methods),
from the quality default down to real-time networks for the CPU.

Three knobs span the family (``model.*`` in the training config, recorded in the model card):

* ``filters``: channels per level, full resolution first. Full-resolution layers dominate the run
  time on a CPU (memory traffic grows with channels × pixels), so real-time networks keep few
  channels there and more at the coarser levels, where a pixel costs a quarter, a sixteenth...
* ``block``: ``conv`` (two 3×3 convolutions) or ``dsconv`` (depthwise-separable: a 3×3 depthwise
  then a 1×1 pointwise convolution, twice; about a seventh of the FLOPs at 32 channels).
* ``skip``: how the decoder joins the encoder's features: ``concat`` (CARE's U-Net: upsample the
  coarser level's ``filters[l+1]`` channels, concatenate, convolve), ``project`` (a 1×1 convolution
  first maps the coarser level down to ``filters[l]`` channels, then upsample and concatenate: the
  full-resolution tensors are ``2·filters[0]`` channels instead of ``filters[0] + filters[1]``), or
  ``add`` (project, upsample and add: the cheapest, ``filters[0]`` channels, but on FMD it costs
  about 0.15 dB).
* ``input_frames`` (K): the network sees K consecutive frames (t−K+1 … t, oldest first) as input
  channels and denoises frame t (causal: no future frame, so no added latency); the residual output
  adds to the newest frame. K = 1 is the single-frame network, unchanged.
* ``frame_stem`` (K > 1): the front end where the K frames meet. 0: the K frames enter the first
  convolution as its input channels. S > 0: one 3×3 convolution with S channels and a ReLU, the same
  weights on every frame (a grouped convolution), so every frame gets the same features before the
  first level mixes them (K·S channels in; with a 4-channel first level the K frames otherwise compete
  for four channels, and the older ones were learned away).
* ``residual_frames``: what the residual output adds to: ``newest`` (frame t) or ``mix`` (a learned
  weighted sum of the K frames, free weights initialised to their mean: a still field starts from the
  K-frame average, with a K-th of the noise variance, where training from the newest frame alone let a
  thin first level learn to ignore the older frames. The trained weights need not sum to one (on FMD they
  sum to about 0.5, the network supplying the rest).
* ``stem``: ``unshuffle`` folds each 2×2 block of pixels into 4 channels before the U-Net and
  unfolds the output after it (the whole network runs at half resolution: about 4× cheaper,
  at some cost in fine detail).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from streamer.core.card import unet_reach

__all__ = ["BLOCKS", "RESIDUAL_FRAMES", "SKIPS", "STEMS", "UNet", "unet_filters", "unet_reach"]

BLOCKS = ("conv", "dsconv")
STEMS = ("none", "unshuffle")
SKIPS = ("concat", "add", "project")
RESIDUAL_FRAMES = ("newest", "mix")
SUBPIXEL_MAX_FILTERS = 8  # the sub-pixel decoder form pays for networks this thin at full resolution


def unet_filters(depth: int, base_filters: int, filters: Sequence[int] | None = None) -> list[int]:
    """Channels per level (``depth + 1`` values): ``filters`` when given, else ``base_filters``
    doubled at each level."""
    if filters is None:
        return [base_filters * 2**i for i in range(depth + 1)]
    if len(filters) != depth + 1:
        raise ValueError(f"expected {depth + 1} filter counts for depth {depth} (one per level and the "
                         f"bottom), got {len(filters)}: {list(filters)}")
    return [int(f) for f in filters]


def _block(cin: int, cout: int, kind: str, bias: bool = True) -> nn.Sequential:
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=bias), nn.ReLU(inplace=True))
    # depthwise-separable; from a handful of input channels a depthwise 3×3 sees too little, so
    # the first convolution of the network stays a full one
    first: list[nn.Module] = ([nn.Conv2d(cin, cout, 3, padding=1, bias=bias)] if cin < 4 else
                              [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=bias),
                               nn.Conv2d(cin, cout, 1, bias=bias)])
    return nn.Sequential(*first, nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=bias),
                         nn.Conv2d(cout, cout, 1, bias=bias), nn.ReLU(inplace=True))


# Row (and column) mixing that turns a 3×3 kernel applied after nearest 2× upsampling into one 3×3
# kernel per output phase applied before it: phase 0 sees rows (i−1, i, i), phase 1 rows (i, i, i+1).
_PHASES = torch.tensor([[[1.0, 0, 0], [0, 1, 1], [0, 0, 0]],
                        [[0.0, 0, 0], [1, 1, 0], [0, 0, 1]]])


class _CatUp(nn.Sequential):
    """Decoder level, CARE's way: upsample, concatenate the skip, convolve (keeps the Sequential's
    parameter names, so models trained before the family existed still load).

    With ``subpixel`` the same arithmetic runs in a cheaper order: the first convolution is split
    into its part on the upsampled coarse features and its part on the skip; the former runs at the
    coarse resolution with one kernel per output phase, then a pixel shuffle puts the phases in place
    (conv3×3(upsample(y)) == pixel_shuffle(conv3×3(y, phase kernels)), exactly). No full-resolution
    copy of the coarse features or of the concatenation is ever made: about 14% less time for the
    thin real-time networks on a CPU, nothing for the wide default (so it is used where the finest
    level has at most 8 channels)."""

    def __init__(self, *layers: nn.Module, subpixel: bool = False) -> None:
        super().__init__(*layers)
        self.subpixel = subpixel
        self.register_buffer("phases", _PHASES.clone(), persistent=False)

    def forward(self, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.subpixel:
            w, b = self[0].weight, self[0].bias
            c = int(y.shape[1])
            up = w[:, :c]  # (out, c, 3, 3): the kernel's part on the upsampled features
            rows = self.phases[None, :, None, None]
            k = rows @ up[:, None, None] @ self.phases[None, None, :, None].transpose(-1, -2)
            k = k.reshape(int(w.shape[0]) * 4, c, 3, 3)  # channel o·4 + 2·row phase + column phase
            x = F.pixel_shuffle(F.conv2d(y, k, None, 1, 1), 2) + F.conv2d(skip, w[:, c:], b, 1, 1)
            for i, layer in enumerate(self):
                if i > 0:
                    x = layer(x)
            return x
        x = torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), skip], dim=1)
        for layer in self:
            x = layer(x)
        return x


class _AddUp(nn.Module):
    """Decoder level with an additive skip: 1×1 projection at the coarse level, upsample, add, convolve."""

    def __init__(self, coarse: int, fine: int, block: str, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(coarse, fine, 1, bias=bias)
        self.block = _block(fine, fine, block, bias)

    def forward(self, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(F.interpolate(self.proj(y), scale_factor=2.0, mode="nearest") + skip)


class _ProjectUp(nn.Module):
    """Decoder level: 1×1 projection at the coarse level down to this level's channels, upsample,
    concatenate the skip, convolve: CARE's concatenation on a slimmer tensor."""

    def __init__(self, coarse: int, fine: int, block: str, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(coarse, fine, 1, bias=bias)
        self.block = _block(2 * fine, fine, block, bias)
        self.split: bool = block == "conv"

    def forward(self, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.proj(y), scale_factor=2.0, mode="nearest")
        if self.split:
            # conv(cat(up, skip)) as conv(up) + conv(skip) with the two halves of the same weights: the
            # same arithmetic without writing the concatenated tensor (a slow copy at full resolution)
            w, b = self.block[0].weight, self.block[0].bias
            c = int(up.shape[1])
            y = F.conv2d(up, w[:, :c], None, 1, 1) + F.conv2d(skip, w[:, c:], b, 1, 1)
            for i, layer in enumerate(self.block):
                if i > 0:
                    y = layer(y)
            return y
        return self.block(torch.cat([up, skip], dim=1))


class UNet(nn.Module):
    """U-Net for single-channel frames (one, or ``input_frames`` consecutive ones as channels).

    ``depth`` pooling levels, ``filters[l]`` channels at level ``l`` (default ``base_filters``
    doubled at each level). With ``residual=True`` the network predicts a correction added to its
    input, as CARE does. Frames of any size >= ``size_multiple`` are accepted: sizes not divisible
    by it are reflect-padded and the output is cropped back (output shape == input shape).
    """

    def __init__(self, depth: int = 2, base_filters: int = 32, residual: bool = True,
                 filters: Sequence[int] | None = None, block: str = "conv", stem: str = "none",
                 skip: str = "concat", input_frames: int = 1, frame_stem: int = 0,
                 residual_frames: str = "newest", bias: bool = True) -> None:
        super().__init__()
        if input_frames < 1:
            raise ValueError(f"U-Net input_frames must be >= 1, got {input_frames}")
        if depth < 1:
            raise ValueError(f"U-Net depth must be >= 1, got {depth}")
        if base_filters < 1:
            raise ValueError(f"U-Net base_filters must be >= 1, got {base_filters}")
        if block not in BLOCKS:
            raise ValueError(f"U-Net block must be one of {', '.join(BLOCKS)}, got {block!r}")
        if stem not in STEMS:
            raise ValueError(f"U-Net stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if skip not in SKIPS:
            raise ValueError(f"U-Net skip must be one of {', '.join(SKIPS)}, got {skip!r}")
        if frame_stem < 0:
            raise ValueError(f"U-Net frame_stem must be >= 0 (0: none), got {frame_stem}")
        if residual_frames not in RESIDUAL_FRAMES:
            raise ValueError(f"U-Net residual_frames must be one of {', '.join(RESIDUAL_FRAMES)}, "
                             f"got {residual_frames!r}")
        chans = unet_filters(depth, base_filters, filters)
        if min(chans) < 1:
            raise ValueError(f"U-Net filters must all be >= 1, got {chans}")
        self.depth = depth
        self.base_filters = base_filters
        self.residual = residual
        self.filters = chans
        self.block = block
        self.stem = stem
        self.skip = skip
        self.input_frames: int = int(input_frames)
        self.frame_stem: int = int(frame_stem)
        self.residual_frames = residual_frames
        self.bias: bool = bool(bias)
        self.fold: int = 2 if stem == "unshuffle" else 1
        self.size_multiple: int = 2**depth * self.fold
        """Frame sizes divisible by this run without padding."""
        self.reach: int = unet_reach(depth + (1 if self.fold > 1 else 0))
        """Tile margin that makes tiled output equal whole-frame output."""
        cin = self.fold**2 * self.input_frames
        # (None when not used: TorchScript drops the branch of an attribute that is None)
        self.stem_conv: nn.Conv2d | None = None
        if self.frame_stem:
            self.stem_conv = nn.Conv2d(self.fold**2, self.frame_stem, 3, padding=1, bias=bias)  # shared by the K frames
            cin = self.frame_stem * self.input_frames
        self.mix: nn.Parameter | None = None
        if residual_frames == "mix":
            self.mix = nn.Parameter(torch.full((self.input_frames,), 1.0 / self.input_frames))
        self.down = nn.ModuleList()
        for c in chans[:-1]:
            self.down.append(_block(cin, c, block, bias))
            cin = c
        self.bottom = _block(chans[-2], chans[-1], block, bias)
        self.up = nn.ModuleList()
        for lvl in reversed(range(depth)):
            if skip == "add":
                self.up.append(_AddUp(chans[lvl + 1], chans[lvl], block, bias))
            elif skip == "project":
                self.up.append(_ProjectUp(chans[lvl + 1], chans[lvl], block, bias))
            else:
                self.up.append(_CatUp(*_block(chans[lvl + 1] + chans[lvl], chans[lvl], block, bias),
                                      subpixel=block == "conv" and chans[0] <= SUBPIXEL_MAX_FILTERS))
        self.head = nn.Conv2d(chans[0], self.fold**2, 1, bias=bias)
        if not bias:
            # without biases nothing keeps the activations from fading layer by layer under PyTorch's default
            # initialisation (a gain of about 1/sqrt(3) a layer); He initialisation keeps their scale
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    @property
    def architecture(self) -> dict[str, Any]:
        """The constructor's arguments: ``UNet(**net.architecture)`` rebuilds the network."""
        arch: dict[str, Any] = {"depth": self.depth, "base_filters": self.base_filters, "residual": self.residual,
                                "filters": list(self.filters), "block": self.block, "stem": self.stem,
                                "skip": self.skip}
        if self.input_frames != 1:  # (a single-frame network's record is as it always was)
            arch["input_frames"] = self.input_frames
        if self.frame_stem:
            arch["frame_stem"] = self.frame_stem
        if self.residual_frames != "newest":
            arch["residual_frames"] = self.residual_frames
        if not self.bias:
            arch["bias"] = False
        return arch

    def flops_per_pixel(self) -> float:
        """Floating-point operations (2 per multiply-add) of the convolutions per input pixel."""
        total = 0.0
        placed: list[tuple[int, nn.Module]] = [(i, m) for i, m in enumerate(self.down)]
        placed += [(self.depth, self.bottom), (0, self.head)]
        for i, up in enumerate(self.up):
            lvl = self.depth - 1 - i
            placed += [(lvl + 1, up.proj), (lvl, up.block)] if isinstance(up, _AddUp | _ProjectUp) else [(lvl, up)]
        if self.frame_stem:
            total += 2 * self.frame_stem * 9 * self.input_frames  # fold² in, S out, on 1/fold² of the pixels
        if self.residual_frames == "mix":
            total += 2 * self.input_frames
        for lvl, mod in placed:
            pixels = 1.0 / (self.fold * 2**lvl) ** 2
            for conv in (m for m in mod.modules() if isinstance(m, nn.Conv2d)):
                k = conv.kernel_size[0] * conv.kernel_size[1]
                total += 2 * pixels * conv.out_channels * (conv.in_channels // conv.groups) * k
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = self.size_multiple
        # Always pad (by 0 when already divisible): no shape-dependent branch, so the
        # exported ONNX graph keeps dynamic height and width. Needs h, w >= size_multiple.
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        y = F.pixel_unshuffle(x, self.fold) if self.fold > 1 else x
        stem = self.stem_conv
        if stem is not None:  # channels frame-major (k·fold² + phase), so groups=K gives each frame the same conv
            k = self.input_frames
            bias = stem.bias
            y = F.relu(F.conv2d(y, stem.weight.repeat(k, 1, 1, 1), bias.repeat(k) if bias is not None else None,
                                1, 1, 1, k))
        skips: list[torch.Tensor] = []
        for block in self.down:
            y = block(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bottom(y)
        for i, up in enumerate(self.up):
            y = up(y, skips[len(skips) - 1 - i])
        y = self.head(y)
        if self.fold > 1:
            y = F.pixel_shuffle(y, self.fold)
        if self.residual:
            mix = self.mix
            if mix is not None:
                y = y + (x * mix.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
            else:
                y = y + (x[:, self.input_frames - 1 :] if self.input_frames > 1 else x)  # the newest frame
        return y[..., :h, :w]
