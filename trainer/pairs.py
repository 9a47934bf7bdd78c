"""Training pairs: consecutive noisy frames (Noise2Noise) or noisy → clean (supervised CARE)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["ExposureAugment", "n2n_pair_indices", "n2n_window_indices", "supervised_window_indices", "window",
           "PairSampler", "held_out_pairs", "split_rows", "summed_light"]


def window(t: int, k: int, first: int = 0) -> list[int]:
    """Frame indices a K-frame model sees to denoise frame ``t``: t−K+1 … t, oldest first, where a frame before
    ``first`` (the start of the sequence) is replaced by ``first``: the oldest frame is repeated until K have
    arrived, as the streamer does (streamer/core/history.py).

    >>> window(1, 3)
    [0, 0, 1]
    """
    return [max(first, t - k + 1 + i) for i in range(k)]


def n2n_window_indices(n_frames: int, k: int, reverse: bool = True) -> np.ndarray:
    """Noise2Noise pairs of a K-frame model, one row each: K input frame indices (oldest first) and the target.

    Forward: frames t−K+1 … t → t+1, for every t (the first ones with the oldest frame repeated, as at the start
    of a live stream). ``reverse`` adds the time-reversed windows: frames t+K−1 … t (in that order, so the frame
    next to the target is last) → t−1. With k == 1 this is :func:`n2n_pair_indices`.

    >>> n2n_window_indices(3, 2, reverse=False).tolist()
    [[0, 0, 1], [0, 1, 2]]
    """
    if k == 1:
        return n2n_pair_indices(n_frames)
    if n_frames < 2:
        raise ValueError(f"Noise2Noise needs at least 2 consecutive frames per stack, got {n_frames}")
    rows = [[*window(t, k), t + 1] for t in range(n_frames - 1)]
    if reverse:  # index r in reversed time is frame n−1−r
        rows += [[n_frames - 1 - i for i in window(r, k)] + [n_frames - 2 - r] for r in range(n_frames - 1)]
    return np.asarray(rows, dtype=np.int64)


def supervised_window_indices(n_frames: int, k: int, per_frame_reference: bool) -> np.ndarray:
    """Supervised pairs: K input frame indices (the window ending at t) and the reference index (t, or 0 for one
    reference for the whole stack)."""
    return np.asarray([[*window(t, k), t if per_frame_reference else 0] for t in range(n_frames)], dtype=np.int64)


def n2n_pair_indices(n_frames: int) -> np.ndarray:
    """All (input, target) frame indices of consecutive frames, in both directions.

    >>> n2n_pair_indices(3).tolist()
    [[0, 1], [1, 0], [1, 2], [2, 1]]
    """
    if n_frames < 2:
        raise ValueError(
            f"Noise2Noise needs at least 2 consecutive frames per stack, got {n_frames}"
        )
    t = np.arange(n_frames - 1)
    fwd = np.stack([t, t + 1], axis=1)
    pairs = np.empty((2 * (n_frames - 1), 2), dtype=np.int64)
    pairs[0::2] = fwd
    pairs[1::2] = fwd[:, ::-1]
    return pairs


def split_rows(height: int, val_fraction: float, multiple: int, min_rows: int) -> int:
    """First row of the held-out validation strip at the bottom of each frame.

    The strip is ``val_fraction`` of the rows, rounded up to ``multiple``; the training part
    above it keeps at least ``min_rows`` rows (one patch).
    """
    val = int(np.ceil(height * val_fraction / multiple)) * multiple
    val = max(val, multiple)
    split = height - val
    if split < min_rows:
        raise ValueError(
            f"Frames of height {height} are too small to hold out {val} validation rows and "
            f"still draw {min_rows}-pixel patches; use larger frames or a smaller patch_size"
        )
    return split


def held_out_pairs(
    stacks: Sequence[np.ndarray],
    splits: Sequence[int],
    references: Sequence[np.ndarray] | None,
    mode: str,
    n_pairs: int,
    k: int = 1,
) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]]:
    """Validation items from the held-out bottom rows (``splits[i]:``) of each stack, spread evenly
    in time: ``(input, target, reference or None, data range of the reference or 0)``. The target is
    the next frame (Noise2Noise) or the reference (supervised). The input is frame t (H, W), or with
    ``k`` > 1 its window (K, H, W) of frames t−K+1 … t (the oldest repeated at the start)."""
    from .metrics import data_range_of

    items: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]] = []
    for i, stack in enumerate(stacks):
        t = stack.shape[0]
        ref = None if references is None else references[i]
        rng = data_range_of(ref) if ref is not None else 0.0
        last = t - 1 if mode == "n2n" else t
        idx = np.unique(np.linspace(0, max(last - 1, 0), min(n_pairs, max(last, 1))).round().astype(int))
        for k_ in idx:
            x = stack[k_, splits[i]:] if k == 1 else stack[window(int(k_), k), splits[i]:]
            r = None if ref is None else (ref[k_] if ref.ndim == 3 else ref)[splits[i]:]
            y = stack[k_ + 1, splits[i]:] if mode == "n2n" else r
            items.append((x, y, r, rng))
    return items


def summed_light(frames: np.ndarray, offset: float) -> np.ndarray:
    """Consecutive frames (n, H, W) summed into one frame of their summed light, the camera's offset counted once
    (float32): a sum of Poisson counts is the count of the summed light."""
    return frames.sum(axis=0, dtype=np.float32) - np.float32((len(frames) - 1) * offset)


class ExposureAugment:
    """Training pairs at other exposures, made from the recorded ones with the camera's noise model, so that a model
    trained at one exposure serves the others (a microscopist changes exposure and laser power mid-session).

    A factor ``f`` is drawn log-uniformly in ``[low, high]`` for a share ``share`` of the pairs. Dimmer (``f < 1``):
    each frame's photo-electrons thinned, kept each with probability ``f`` (binomial thinning of a Poisson count is
    the Poisson count of ``f`` times the light), read noise added back. Brighter (``f`` ≥ 1.5, Noise2Noise runs):
    blocks of ``n = round(f)`` consecutive frames, each summed (a sum of Poisson counts is the count of the summed
    light), the window K blocks and the target the next block (independent noise: still a Noise2Noise pair).
    """

    def __init__(self, low: float, high: float, gain: float, offset: float, read_noise: float,
                 share: float = 0.5) -> None:
        if not 0 < low <= high:
            raise ValueError(f"expected 0 < low <= high exposure factors, got {low}, {high}")
        self.low, self.high, self.share = float(low), float(high), float(share)
        self.gain, self.offset, self.read_noise = float(gain), float(offset), float(read_noise)

    def draw(self, rng: np.random.Generator) -> float:
        if rng.random() >= self.share:
            return 1.0
        return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))

    def thin(self, x: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
        """Camera values at ``f`` times the light (``f`` < 1), float32."""
        electrons = np.rint(np.maximum((np.asarray(x, np.float64) - self.offset) / self.gain, 0)).astype(np.int64)
        kept = rng.binomial(electrons, f).astype(np.float32)
        out = kept * np.float32(self.gain) + np.float32(self.offset)
        if self.read_noise > 0:
            out += rng.normal(0, self.read_noise, out.shape).astype(np.float32)
        return out

    def summed(self, frames: np.ndarray) -> np.ndarray:
        """The sum of consecutive frames as one frame of their summed light (the offset counted once), float32."""
        return summed_light(frames, self.offset)


class PairSampler:
    """Draws random (input, target) patch batches with random flips and 90° rotations.

    ``inputs``: normalised (T, H, W) float32 stacks. ``targets``: None for Noise2Noise
    (targets are the neighbouring frames of the same stack), else one normalised clean
    reference per stack, (H, W) or (T, H, W). Patches come from rows ``[0, row_limit)``. With ``k`` > 1, a
    fraction ``repeated`` of the windows are the frame next to the target repeated K times (a frame alone, as
    the streamer sends the first frame of a stream or one that moved).
    """

    def __init__(
        self,
        inputs: Sequence[np.ndarray],
        patch_size: int,
        row_limit: Sequence[int],
        targets: Sequence[np.ndarray] | None = None,
        seed: int = 0,
        k: int = 1,
        reverse: bool = True,
        repeated: float = 0.0,
        augment: ExposureAugment | None = None,
        normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if not inputs:
            raise ValueError("Expected at least one training stack, got none")
        if augment is not None and normalize is None:
            raise ValueError("exposure augmentation needs the camera's frames and their normalisation")
        self.augment = augment
        """With it, ``inputs`` are the camera's frames (normalised per patch, after the exposure is changed)."""
        self.normalize = normalize
        self.inputs = list(inputs)
        self.targets = list(targets) if targets is not None else None
        self.patch = patch_size
        self.row_limit = list(row_limit)
        self.rng = np.random.default_rng(seed)
        self.k = k
        if not 0.0 <= repeated <= 1.0:
            raise ValueError(f"repeated must be a fraction in [0, 1], got {repeated}")
        self.repeated = float(repeated) if k > 1 else 0.0
        self._pairs: list[np.ndarray] = []
        weights = []
        for i, stack in enumerate(self.inputs):
            t, h, w = stack.shape
            if self.row_limit[i] < patch_size or w < patch_size:
                raise ValueError(
                    f"Stack {i}: training area {self.row_limit[i]}×{w} is smaller than "
                    f"patch_size {patch_size}"
                )
            if self.targets is None:
                pairs = n2n_window_indices(t, k, reverse)
            else:
                ref = self.targets[i]
                if ref.shape[-2:] != (h, w) or (ref.ndim == 3 and ref.shape[0] != t):
                    raise ValueError(
                        f"Stack {i}: reference shape {ref.shape} does not match frames {stack.shape}"
                    )
                pairs = supervised_window_indices(t, k, ref.ndim == 3)
            self._pairs.append(pairs)
            weights.append(len(pairs) * self.row_limit[i] * w)
        self._p = np.asarray(weights, dtype=np.float64) / sum(weights)

    def __len__(self) -> int:
        return sum(len(p) for p in self._pairs)

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch (B, K, P, P) of inputs and the matching targets (B, 1, P, P)."""
        p = self.patch
        x = np.empty((batch, self.k, p, p), dtype=np.float32)
        y = np.empty((batch, 1, p, p), dtype=np.float32)
        stacks = self.rng.choice(len(self.inputs), size=batch, p=self._p)
        for b, s in enumerate(stacks):
            row = self._pairs[s][self.rng.integers(len(self._pairs[s]))]
            src, dst = row[:-1], row[-1]
            if self.repeated and self.rng.random() < self.repeated:
                src = np.full(self.k, src[-1])
            w = self.inputs[s].shape[2]
            r = self.rng.integers(0, self.row_limit[s] - p + 1)
            c = self.rng.integers(0, w - p + 1)
            a = self.inputs[s][src, r : r + p, c : c + p]  # (K, P, P)
            if self.targets is None:
                t = self.inputs[s][dst, r : r + p, c : c + p]
            else:
                ref = self.targets[s]
                t = (ref[dst] if ref.ndim == 3 else ref)[r : r + p, c : c + p]
            if self.augment is not None:
                a, t = self._at_exposure(s, a, t, r, c)
            k = int(self.rng.integers(4))
            if self.rng.integers(2):
                a, t = a[..., ::-1], t[:, ::-1]
            x[b] = np.rot90(a, k, axes=(1, 2))
            y[b, 0] = np.rot90(t, k)
        return x, y

    def _at_exposure(self, s: int, a: np.ndarray, t: np.ndarray, r: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """A camera-value pair at a drawn exposure (see :class:`ExposureAugment`), normalised."""
        aug, norm = self.augment, self.normalize
        assert aug is not None and norm is not None
        f = aug.draw(self.rng)
        stack = self.inputs[s]
        n = min(round(f), stack.shape[0] // (self.k + 1))
        if f >= 1.5 and n >= 2 and self.targets is None:
            # K + 1 consecutive blocks of n frames, each summed: the window is the first K, the target the next
            # (or, reversed, the window the last K newest-last and the target the block before them)
            t0 = int(self.rng.integers(0, stack.shape[0] - (self.k + 1) * n + 1))
            p = self.patch
            blocks = [aug.summed(stack[t0 + j * n : t0 + (j + 1) * n, r : r + p, c : c + p])
                      for j in range(self.k + 1)]
            if self.rng.integers(2):
                blocks = blocks[::-1]
            if self.repeated and self.rng.random() < self.repeated:
                blocks[: self.k] = [blocks[self.k - 1]] * self.k
            a, t = np.stack(blocks[: self.k]), blocks[self.k]
        elif f < 1:
            a = aug.thin(a, f, self.rng)
            t = aug.thin(t, f, self.rng) if self.targets is None else np.asarray(t, np.float32) * np.float32(f) + \
                np.float32((1 - f) * aug.offset)
        return norm(a), norm(t)
