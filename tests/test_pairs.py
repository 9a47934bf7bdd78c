"""Training pairs: N2N frame indices, patch sampling, supervised targets, validation split."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.pairs import PairSampler, n2n_pair_indices, split_rows

T_STEP, S_STEP, R_STEP = 100_000.0, 10_000.0, 100.0


def coded_stack(stack_id: int, t: int, h: int, w: int) -> np.ndarray:
    """Frames whose pixel values encode (frame, stack, row, column): t·1e5 + s·1e4 + r·100 + c."""
    tt, rr, cc = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return (tt * T_STEP + stack_id * S_STEP + rr * R_STEP + cc).astype(np.float32)


def decode(patch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (frame, stack, row, column) of a coded patch."""
    v = patch.astype(np.int64)
    return v // 100_000, v % 100_000 // 10_000, v % 10_000 // 100, v % 100


def dihedral(a: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a 2-D array."""
    return [np.rot90(b, k) for b in (a, a[:, ::-1]) for k in range(4)]


def test_pair_indices_of_three_frames() -> None:
    """Three frames give both directions of each consecutive pair, in order."""
    assert n2n_pair_indices(3).tolist() == [[0, 1], [1, 0], [1, 2], [2, 1]]


def test_pair_indices_are_consecutive() -> None:
    """Every pair of a longer stack joins neighbours, and each neighbour pair appears both ways."""
    pairs = n2n_pair_indices(10)

    assert len(pairs) == 18
    assert np.all(np.abs(pairs[:, 0] - pairs[:, 1]) == 1)
    assert {tuple(p) for p in pairs} == {(i, i + 1) for i in range(9)} | {(i + 1, i) for i in range(9)}


@pytest.mark.parametrize("n", [0, 1])
def test_pair_indices_need_two_frames(n: int) -> None:
    """Fewer than two frames raises ValueError saying N2N needs 2 frames."""
    with pytest.raises(ValueError, match="at least 2 consecutive frames"):
        n2n_pair_indices(n)


def test_n2n_patches_come_from_neighbouring_frames_same_place_same_transform() -> None:
    """Every (x, y) pair: frames t and t±1 of one stack, same location, same flip/rotation."""
    stacks = [coded_stack(0, 4, 40, 48), coded_stack(1, 3, 56, 36)]
    limits = [24, 40]
    p = 16
    sampler = PairSampler(stacks, p, limits, seed=3)

    x, y = sampler.sample(64)

    assert x.shape == y.shape == (64, 1, p, p) and x.dtype == np.float32
    seen_stacks, seen_transforms = set(), set()
    for xb, yb in zip(x[:, 0], y[:, 0]):
        fx, sx, rows, cols = decode(xb)
        fy, sy, _, _ = decode(yb)
        assert len(np.unique(fx)) == 1 and len(np.unique(fy)) == 1
        assert abs(int(fx[0, 0]) - int(fy[0, 0])) == 1
        assert np.all(sx == sx[0, 0]) and np.all(sy == sx[0, 0])
        diff = yb - xb
        assert np.all(diff == diff[0, 0]) and abs(diff[0, 0]) == T_STEP  # same place, same transform
        s, t = int(sx[0, 0]), int(fx[0, 0])
        r0, c0 = rows.min(), cols.min()
        assert rows.max() - r0 == p - 1 and cols.max() - c0 == p - 1
        assert rows.max() < limits[s]
        block = stacks[s][t, r0 : r0 + p, c0 : c0 + p]
        matches = [i for i, d in enumerate(dihedral(block)) if np.array_equal(d, xb)]
        assert matches, "x is not a flip/rotation of a source block"
        seen_stacks.add(s)
        seen_transforms.add(matches[0])
    assert seen_stacks == {0, 1}
    assert len(seen_transforms) >= 6  # augmentation actually varies


def test_patches_only_from_rows_above_limit() -> None:
    """No sampled patch reaches row_limit or below (the validation strip)."""
    stack = coded_stack(0, 3, 64, 32)
    sampler = PairSampler([stack], 16, [20], seed=0)

    x, y = sampler.sample(200)

    assert decode(x)[2].max() < 20 and decode(y)[2].max() < 20
    assert decode(x)[2].max() == 19  # the last allowed row is reachable


def test_sampler_is_seeded() -> None:
    """Same seed, same batches; different seed, different batches."""
    stack = coded_stack(0, 4, 32, 32)

    a = PairSampler([stack], 16, [32], seed=1).sample(8)
    b = PairSampler([stack], 16, [32], seed=1).sample(8)
    c = PairSampler([stack], 16, [32], seed=2).sample(8)

    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_supervised_2d_reference_targets_match_input_patch() -> None:
    """Supervised with one (H, W) reference: y is the reference at x's place and transform."""
    stack = coded_stack(0, 4, 32, 40)
    ref = stack[0] + 0.5  # the frame-0 code plus a marker
    sampler = PairSampler([stack], 16, [32], targets=[ref], seed=5)

    x, y = sampler.sample(32)

    frames = decode(x)[0][:, 0, 0, 0]
    np.testing.assert_array_equal(y, x - frames[:, None, None, None] * T_STEP + 0.5)
    assert len(np.unique(frames)) > 1  # inputs come from all frames


def test_supervised_3d_reference_uses_same_frame() -> None:
    """Supervised with a (T, H, W) reference: y is reference frame t for input frame t."""
    stack = coded_stack(0, 4, 32, 40)
    ref = stack + 0.25
    sampler = PairSampler([stack], 16, [32], targets=[ref], seed=6)

    x, y = sampler.sample(32)

    np.testing.assert_array_equal(y, x + 0.25)


def test_len_counts_pairs() -> None:
    """len(sampler) is the number of available (input, target) index pairs over all stacks."""
    sampler = PairSampler([coded_stack(0, 4, 32, 32), coded_stack(1, 2, 32, 32)], 16, [32, 32])

    assert len(sampler) == 6 + 2


def test_reference_shape_mismatch_rejected() -> None:
    """A reference whose shape does not match the frames raises ValueError naming both shapes."""
    stack = coded_stack(0, 3, 32, 32)

    with pytest.raises(ValueError, match=r"reference shape \(32, 30\) does not match frames \(3, 32, 32\)"):
        PairSampler([stack], 16, [32], targets=[np.zeros((32, 30), np.float32)])
    with pytest.raises(ValueError, match="does not match"):
        PairSampler([stack], 16, [32], targets=[np.zeros((2, 32, 32), np.float32)])


@pytest.mark.parametrize(("limit", "width"), [(15, 32), (32, 15)])
def test_training_area_smaller_than_patch_rejected(limit: int, width: int) -> None:
    """A training area smaller than one patch raises ValueError naming the patch size."""
    with pytest.raises(ValueError, match="smaller than patch_size 16"):
        PairSampler([coded_stack(0, 3, 32, width)], 16, [limit])


def test_no_stacks_rejected() -> None:
    """An empty stack list raises ValueError."""
    with pytest.raises(ValueError, match="at least one training stack"):
        PairSampler([], 16, [])


@pytest.mark.parametrize(
    ("height", "fraction", "multiple", "min_rows", "expected"),
    [
        (64, 0.1, 4, 32, 56),  # 6.4 rows → rounded up to 8
        (64, 0.01, 8, 32, 56),  # at least one multiple
        (100, 0.25, 4, 16, 72),  # 25 rows, rounded up to 28
        (512, 0.1, 16, 64, 448),
    ],
)
def test_split_rows(height: int, fraction: float, multiple: int, min_rows: int, expected: int) -> None:
    """The validation strip is val_fraction of the rows rounded up to the size multiple."""
    split = split_rows(height, fraction, multiple, min_rows)

    assert split == expected
    assert (height - split) % multiple == 0
    assert height - split >= height * fraction


def test_split_rows_too_small_frames() -> None:
    """Frames too short for a patch plus the validation strip raise ValueError with advice."""
    with pytest.raises(ValueError, match="too small to hold out 8 validation rows"):
        split_rows(40, 0.1, 8, 40)
