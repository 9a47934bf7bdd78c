"""Reading stacks from TIFF files: TiffSource replay and read_stack with clear errors."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from streamer.sources import EndOfStream, FrameSource, StackError, TiffSource, grab, read_stack


@pytest.fixture
def numbered_stack(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Five 16×24 uint16 frames whose pixels equal 1000·t + pixel position (order is visible)."""
    t, h, w = 5, 16, 24
    frames = (np.arange(t)[:, None, None] * 1000 + np.arange(h * w).reshape(h, w)).astype(np.uint16)
    path = tmp_path / "numbered.ome.tif"
    tifffile.imwrite(path, frames, ome=True, metadata={"axes": "TYX"})
    return path, frames


def test_tiff_source_replays_frames_in_order(numbered_stack: tuple[Path, np.ndarray]) -> None:
    """TiffSource returns every frame unchanged, in order, then raises EndOfStream."""
    path, frames = numbered_stack

    with TiffSource(path) as src:
        assert isinstance(src, FrameSource)
        assert len(src) == 5 and src.shape == (16, 24) and src.dtype == np.uint16
        got = [src.read() for _ in range(5)]
        with pytest.raises(EndOfStream):
            src.read()

    for i, frame in enumerate(got):
        np.testing.assert_array_equal(frame.pixels, frames[i])
        assert frame.index == i and frame.metadata["page"] == i


def test_tiff_source_iteration_stops_at_end(numbered_stack: tuple[Path, np.ndarray]) -> None:
    """Iterating a finite TiffSource yields exactly its frames."""
    path, frames = numbered_stack

    with TiffSource(path) as src:
        stack = np.stack([f.pixels for f in src])

    np.testing.assert_array_equal(stack, frames)


def test_tiff_source_loop_wraps(numbered_stack: tuple[Path, np.ndarray]) -> None:
    """With loop=True the source starts over after the last frame, indices keep counting."""
    path, frames = numbered_stack

    with TiffSource(path, loop=True) as src:
        got = [src.read() for _ in range(12)]

    for i, frame in enumerate(got):
        np.testing.assert_array_equal(frame.pixels, frames[i % 5])
        assert frame.index == i
    assert got[7].metadata["page"] == 2


def test_grab_from_tiff_matches_file(numbered_stack: tuple[Path, np.ndarray]) -> None:
    """grab() of all frames equals the stored stack; asking for more raises EndOfStream."""
    path, frames = numbered_stack

    with TiffSource(path) as src:
        np.testing.assert_array_equal(grab(src, 5), frames)
    with TiffSource(path) as src, pytest.raises(EndOfStream, match="after 5 of 6"):
        grab(src, 6)


def test_tiff_source_paces_to_fps(numbered_stack: tuple[Path, np.ndarray]) -> None:
    """At fps=50, reading 5 frames takes at least 4 frame intervals (0.08 s)."""
    path, _ = numbered_stack

    with TiffSource(path, fps=50) as src:
        t0 = time.perf_counter()
        for _ in range(5):
            src.read()
        elapsed = time.perf_counter() - t0

    assert elapsed >= 0.075  # timing: a floor the source enforces by sleeping (a busy machine is only slower)


def test_closed_source_refuses_reads(numbered_stack: tuple[Path, np.ndarray]) -> None:
    """read() after close() raises instead of returning stale data."""
    src = TiffSource(numbered_stack[0])
    src.close()

    with pytest.raises(RuntimeError, match="closed"):
        src.read()


def test_read_stack_round_trip(numbered_stack: tuple[Path, np.ndarray]) -> None:
    """read_stack returns the written (T, H, W) stack with its dtype and order."""
    path, frames = numbered_stack

    data = read_stack(path, min_frames=2)

    assert data.dtype == frames.dtype
    np.testing.assert_array_equal(data, frames)


def test_read_stack_plain_tiff_float(tmp_path: Path) -> None:
    """A plain (non-OME) float32 TIFF stack is read back exactly."""
    frames = np.random.default_rng(0).random((3, 12, 10)).astype(np.float32)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, frames, photometric="minisblack")

    np.testing.assert_array_equal(read_stack(path), frames)


def test_read_stack_single_image(tmp_path: Path) -> None:
    """A 2-D image reads as (H, W), or as (1, H, W) with allow_2d=False."""
    img = np.arange(100, dtype=np.uint8).reshape(10, 10)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img)

    assert read_stack(path).shape == (10, 10)
    one = read_stack(path, allow_2d=False)
    assert one.shape == (1, 10, 10)
    np.testing.assert_array_equal(one[0], img)


def _write(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    if not kwargs.get("ome"):
        kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, array, **kwargs)
    return path


def test_missing_file(tmp_path: Path) -> None:
    """A missing path raises StackError saying there is no such file."""
    with pytest.raises(StackError, match="no such file"):
        read_stack(tmp_path / "missing.tif")


def test_directory(tmp_path: Path) -> None:
    """A directory raises StackError saying a TIFF file was expected."""
    with pytest.raises(StackError, match="is a directory, expected a TIFF file"):
        read_stack(tmp_path)


def test_garbage_bytes(tmp_path: Path) -> None:
    """A file that is not a TIFF raises StackError (not tifffile's own exception)."""
    path = tmp_path / "fake.tif"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)

    with pytest.raises(StackError, match="not a readable TIFF file"):
        read_stack(path)
    with pytest.raises(StackError, match="not a readable TIFF file"):
        TiffSource(path)


def test_empty_array(tmp_path: Path) -> None:
    """A zero-size stack raises StackError saying it is empty."""
    path = tmp_path / "empty.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tifffile: "writing zero-size array"
        _write(path, np.zeros((0, 16, 16), np.uint16))

    with pytest.raises(StackError, match="is empty"):
        read_stack(path)


def test_single_frame_when_two_needed(tmp_path: Path) -> None:
    """One frame with min_frames=2 raises StackError naming the expected and actual counts."""
    path = _write(tmp_path / "one.ome.tif", np.ones((1, 16, 16), np.uint16), ome=True, metadata={"axes": "TYX"})

    with pytest.raises(StackError, match="expected at least 2 frames, got 1"):
        read_stack(path, min_frames=2, allow_2d=False)


def test_nan_float_stack(tmp_path: Path) -> None:
    """A float stack with NaN or inf raises StackError with the number of bad pixels."""
    data = np.ones((3, 16, 16), np.float32)
    data[1, 2, 3] = np.nan
    data[2, 0, 0] = np.inf
    path = _write(tmp_path / "nan.tif", data)

    with pytest.raises(StackError, match="contains 2 NaN or infinite"):
        read_stack(path)


def test_multichannel_stack(tmp_path: Path) -> None:
    """A 4-D (T, C, Y, X) stack raises StackError asking for a single-channel stack."""
    path = _write(tmp_path / "tcyx.ome.tif", np.zeros((3, 2, 16, 16), np.uint16),
                  ome=True, metadata={"axes": "TCYX"})

    with pytest.raises(StackError, match=r"expected a single-channel image \(Y, X\) or time series \(T, Y, X\).*TCYX"):
        read_stack(path)
    with pytest.raises(StackError, match=r"single-channel .*TCYX"):
        TiffSource(path)


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        pytest.param((2, 32, 32), {"ome": True, "metadata": {"axes": "CYX"}}, id="CYX"),
        pytest.param((32, 32, 3), {"photometric": "rgb"}, id="RGB"),
    ],
)
def test_multichannel_3d_rejected(tmp_path: Path, shape: tuple[int, ...], kwargs: dict) -> None:
    """A 3-D file whose extra axis is channels (not time) raises StackError asking for one channel."""
    path = _write(tmp_path / "channels.tif", np.zeros(shape, np.uint8) + np.arange(shape[-1], dtype=np.uint8),
                  **kwargs)

    with pytest.raises(StackError, match="single-channel"):
        read_stack(path, min_frames=2)


def test_singleton_channel_is_squeezed(tmp_path: Path) -> None:
    """A (T, 1, Y, X) stack with one channel is accepted as (T, H, W)."""
    data = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 1, 16, 16)
    path = _write(tmp_path / "t1yx.ome.tif", data, ome=True, metadata={"axes": "TCYX"})

    out = read_stack(path)

    np.testing.assert_array_equal(out, data[:, 0])


@pytest.mark.parametrize("shape", [(3, 4, 4), (3, 7, 32), (3, 32, 5)])
def test_tiny_frames(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    """Frames smaller than 8 px on a side raise StackError stating the minimum."""
    path = _write(tmp_path / "tiny.tif", np.zeros(shape, np.uint16))

    with pytest.raises(StackError, match=r"too small \(minimum 8×8\)"):
        read_stack(path)


def test_complex_pixels_rejected(tmp_path: Path) -> None:
    """Complex pixels raise StackError asking for integer or float pixels."""
    path = _write(tmp_path / "complex.tif", np.zeros((2, 16, 16), np.complex64))

    with pytest.raises(StackError, match="expected integer or float pixels"):
        read_stack(path)


def test_stack_error_is_a_value_error() -> None:
    """StackError subclasses ValueError (the CLI reports it as a user error)."""
    assert issubclass(StackError, ValueError)


def test_z_axis_read_as_frames(tmp_path: Path) -> None:
    """A plain ImageJ-style stack labelled Z is read as consecutive frames (same pixels, same order)."""
    data = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    path = _write(tmp_path / "zyx.ome.tif", data, ome=True, metadata={"axes": "ZYX"})

    np.testing.assert_array_equal(read_stack(path, min_frames=2), data)
    with TiffSource(path) as src:
        assert len(src) == 4 and src.shape == (16, 16)
