"""Tiling a frame larger than the model's tile: padding to the size multiple, tiles whose origins fall on that
multiple (so the U-Net's pooling grid is the same as for the whole frame) and that share a margin at least the
network's reach; each output pixel is taken from the tile in which it lies furthest from a cut, so the stitched
frame equals the whole-frame result: no seams."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

__all__ = ["TilePlan", "plan_axis"]


def plan_axis(length: int, tile: int, margin: int, multiple: int) -> list[tuple[int, int, int]]:
    """Tiles along one axis of a (padded) ``length``: ``(origin, keep_from, keep_to)`` each.

    ``length`` and ``tile`` are multiples of ``multiple``; ``keep_from:keep_to`` (absolute
    coordinates) partition ``0:length``; each kept pixel is ``>= margin`` from its tile's
    inner borders when ``tile > 2 * margin``."""
    if length <= tile:
        return [(0, 0, length)]
    step = (tile - 2 * margin) // multiple * multiple  # tile origins stay on the size multiple
    if step < multiple:
        raise ValueError(f"tile size {tile} must exceed twice the overlap {margin} by at least {multiple}")
    n = 1 + -(-(length - tile) // step)  # ceil
    span = length - tile
    origins = sorted({min(span, (round(i * span / (n - 1)) // multiple) * multiple) for i in range(n)})
    origins[-1] = span
    cuts = [0] + [(a + b + tile) // 2 for a, b in pairwise(origins)] + [length]
    return [(o, cuts[i], cuts[i + 1]) for i, o in enumerate(origins)]


@dataclass(frozen=True)
class TilePlan:
    """How one frame shape is cut: padding to the size multiple, then tiles along each axis."""

    shape: tuple[int, int]
    padded: tuple[int, int]
    tile: tuple[int, int]
    rows: list[tuple[int, int, int]]
    cols: list[tuple[int, int, int]]
    channels: int = 1
    """Input channels: the model's input frames K."""

    @property
    def batch_shape(self) -> tuple[int, int, int, int]:
        """The engine's input for this frame: (tiles, K, tile height, tile width); its output has 1 channel."""
        return (len(self.rows) * len(self.cols), self.channels, *self.tile)

    @property
    def tiled(self) -> bool:
        return len(self.rows) * len(self.cols) > 1

    @property
    def whole(self) -> bool:
        """The frame goes to the engine as it is: one tile, no padding."""
        return not self.tiled and self.padded == self.shape

    @classmethod
    def make(cls, shape: tuple[int, int], tile_size: int, margin: int, multiple: int, channels: int = 1,
             pads_itself: bool = True) -> TilePlan:
        """``pads_itself``: the network pads a whole frame to its size multiple (ours); else (a zoo package's) the
        frame is padded here to the multiple, one tile, and cropped after."""
        h, w = shape
        if h <= tile_size and w <= tile_size:  # whole frame
            if pads_itself or (h % multiple == 0 and w % multiple == 0):
                return cls(shape, shape, shape, [(0, 0, h)], [(0, 0, w)], channels)
            ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
            return cls(shape, (ph, pw), (ph, pw), [(0, 0, ph)], [(0, 0, pw)], channels)
        tile_size = max(multiple, tile_size // multiple * multiple)
        ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        th, tw = min(tile_size, ph), min(tile_size, pw)
        return cls(shape, (ph, pw), (th, tw), plan_axis(ph, th, margin, multiple), plan_axis(pw, tw, margin, multiple),
                   channels)
