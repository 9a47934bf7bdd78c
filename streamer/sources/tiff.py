"""Replay a TIFF / OME-TIFF stack as a frame source, and read stacks with clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..core.streams import channel_index, channel_labels
from ._base import BaseSource, EndOfStream

__all__ = ["OmeTiffParts", "OmeTiffWriter", "StackError", "TiffSource", "next_file", "read_frame_metadata",
           "read_stack", "stack_channels"]

log = logging.getLogger("n2n.streamer")


class StackError(ValueError):
    """A file is missing, unreadable or not a usable single-channel image stack."""


def _open(path: Path):  # type: ignore[no-untyped-def]
    import tifffile

    if not path.exists():
        raise StackError(f"{path}: no such file")
    if path.is_dir():
        raise StackError(f"{path}: is a directory, expected a TIFF file")
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise StackError(f"{path}: not a readable TIFF file ({exc})") from None


#: Axis letters (tifffile's) accepted as the frame axis: time, or generic/unlabelled stacks.
_TIME_AXES = "TQI"


def _frame_axes(path: Path, shape: tuple[int, ...], axes: str, z_as_time: bool = True) -> tuple[int, ...]:
    """Shape without singleton axes, checked to be (Y, X) or (frames, Y, X).

    Channels or RGB samples are refused (training would pair channel 0 with channel 1 as if
    they were consecutive frames); a Z axis is read as frames with a warning, since plain
    ImageJ stacks label every stack Z, unless ``z_as_time`` is False (an OME-TIFF that says Z means it).
    """
    if 0 in shape:
        raise StackError(f"{path}: is empty (shape {tuple(shape)})")
    keep = [(n, a) for n, a in zip(shape, axes) if n != 1 or a in "YX"]
    kept_shape, kept_axes = tuple(n for n, _ in keep), "".join(a for _, a in keep)
    if kept_axes.endswith("YX") and len(kept_axes) == 2:
        return kept_shape
    if len(kept_axes) == 3 and kept_axes.endswith("YX") and kept_axes[0] in _TIME_AXES + "Z":
        if kept_axes[0] == "Z" and not z_as_time:
            raise StackError(f"{path}: expected a time series (T, Y, X), got a z-stack of {kept_shape[0]} planes "
                             f"(axes {axes!r}): neighbouring planes are not repeated frames of one plane, so "
                             "Noise2Noise would learn to blur between them; record one plane over time (a burst at "
                             "each z works too, one file per plane)")
        if kept_axes[0] == "Z":
            log.warning("%s: axis Z read as consecutive frames (time)", path)
        return kept_shape
    raise StackError(
        f"{path}: expected a single-channel image (Y, X) or time series (T, Y, X), got shape "
        f"{tuple(shape)} with axes {axes!r}; save one channel as an OME-TIFF with axes 'TYX'"
    )


def _channel(path: Path, tif: Any, axes: str, shape: tuple[int, ...], channel: str | int) -> int:
    """The index along C of ``channel`` (an index, or a name from the OME metadata)."""
    if "C" not in axes:
        raise StackError(f"{path}: --channel {channel}: expected a file with a channel axis, got axes {axes!r}")
    try:
        return channel_index(channel, _ome_channel_names(tif), shape[axes.index("C")])
    except ValueError as exc:
        raise StackError(f"{path}: {exc}") from None


def _ome_channel_names(tif: Any) -> list[str]:
    """The OME channel names of the first image, in order (empty where there are none)."""
    if not tif.is_ome:
        return []
    try:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(tif.ome_metadata)
        image = next(el for el in root.iter() if el.tag.endswith("}Image"))
        return [el.get("Name") or "" for el in image.iter() if el.tag.endswith("}Channel")]
    except (ET.ParseError, StopIteration, TypeError):
        return []


def stack_channels(path: str | Path) -> list[str]:
    """The channels along a TIFF / OME-TIFF's C axis, each by its OME name, else by its index as text (``"0"``,
    ``"1"``): what a model set routes by (:mod:`streamer.core.modelset`). Empty for a file without a C axis or with
    one channel only (read whole by :func:`read_stack`)."""
    path = Path(path)
    with _open(path) as tif:
        if not tif.series:
            raise StackError(f"{path}: holds no image data")
        axes, shape = tif.series[0].axes, tuple(tif.series[0].shape)
        if "C" not in axes or shape[axes.index("C")] < 2:
            return []
        return channel_labels(_ome_channel_names(tif), shape[axes.index("C")])


def read_stack(path: str | Path, *, min_frames: int = 1, allow_2d: bool = True, channel: str | int | None = None,
               ome_z_as_time: bool = True) -> np.ndarray:
    """Read a single-channel image or time series from a TIFF / OME-TIFF file.

    Returns (T, H, W) for a stack or (H, W) for a single image (when ``allow_2d``). ``channel`` (an index or an
    OME channel name) takes that channel of a multi-channel file. ``ome_z_as_time=False`` refuses an OME-TIFF
    z-stack (its planes are not a time series; a plain or ImageJ stack labelled Z is still read as frames).
    Raises :class:`StackError` naming what was expected and what the file holds.
    """
    path = Path(path)
    with _open(path) as tif:
        if not tif.series:
            raise StackError(f"{path}: holds no image data")
        series = tif.series[0]
        axes, full = series.axes, tuple(series.shape)
        pick = None if channel is None else _channel(path, tif, axes, full, channel)
        if pick is not None:
            full = full[:axes.index("C")] + full[axes.index("C") + 1:]
            axes = axes.replace("C", "")
        shape = _frame_axes(path, full, axes, z_as_time=ome_z_as_time or not tif.is_ome)
        try:
            data = series.asarray()
            if pick is not None:
                data = np.take(data, pick, axis=series.axes.index("C"))
            data = data.reshape(shape)
        except Exception as exc:
            raise StackError(f"{path}: could not decode pixel data ({exc})") from None
    if data.size == 0:
        raise StackError(f"{path}: is empty (shape {tuple(series.shape)})")
    if data.ndim == 2 and not allow_2d:
        data = data[None]
    if np.iscomplexobj(data) or data.dtype == bool or data.dtype.kind not in "uif":
        raise StackError(f"{path}: expected integer or float pixels, got dtype {data.dtype}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise StackError(f"{path}: contains {bad} NaN or infinite pixel values")
    n = data.shape[0] if data.ndim == 3 else 1
    if n < min_frames:
        raise StackError(
            f"{path}: expected at least {min_frames} frames, got {n} (shape {data.shape})"
        )
    if min(data.shape[-2:]) < 8:
        raise StackError(f"{path}: frames of {data.shape[-2:]} are too small (minimum 8×8)")
    return data


class TiffSource(BaseSource):
    """Replays the frames of a TIFF / OME-TIFF stack, optionally paced and looped.

    Frames are decoded lazily one page at a time, so long stacks do not fill memory.
    """

    def __init__(self, path: str | Path, fps: float = 0.0, loop: bool = False) -> None:
        super().__init__(fps)
        self.path = Path(path)
        self.loop = loop
        self._tif = _open(self.path)
        series = self._tif.series[0] if self._tif.series else None
        if series is None:
            self._tif.close()
            raise StackError(f"{self.path}: holds no image data")
        try:
            shape = _frame_axes(self.path, tuple(series.shape), series.axes)
        except StackError:
            self._tif.close()
            raise
        self._series = series
        self._n = shape[0] if len(shape) == 3 else 1
        self._shape = (int(shape[-2]), int(shape[-1]))
        self._dtype = np.dtype(series.dtype)

    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def _next_frame(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        if index >= self._n and not self.loop:
            raise EndOfStream(f"{self.path}: end of stack after {self._n} frames")
        i = index % self._n
        pixels = self._series.asarray(key=i) if self._n > 1 else self._series.asarray()
        return np.ascontiguousarray(pixels.reshape(self._shape)), {"file": str(self.path), "page": i}

    def close(self) -> None:
        super().close()
        self._tif.close()


class OmeTiffWriter:
    """Write frames one at a time into an OME-TIFF (T[C]YX), with per-frame metadata.

    Frames go to disk as they come (a long recording never sits in memory); :meth:`close`
    writes the OME-XML for however many frames were written, so an interrupted recording is
    still a valid file. Per plane: ``DeltaT`` and ``ExposureTime`` (ms) when the metadata has
    ``ElapsedTime-ms`` / ``Exposure-ms``; every frame's full metadata is kept as JSON in a
    ``CommentAnnotation`` (namespace :data:`METADATA_NAMESPACE`), read back by :func:`read_frame_metadata`.

    The OME-XML and the metadata are written by :meth:`close` only. ``crash_safe``: each plane also gets its own TIFF
    page directory and goes to the operating system as it is written, so a process killed before :meth:`close`
    leaves a plain multi-page TIFF of every plane written (pixels only); without it (one contiguous series, faster
    to read) such a file shows its first plane alone.
    """

    METADATA_NAMESPACE = "n2n-live:frame-metadata"

    def __init__(self, path: str | Path, frame_shape: tuple[int, int], dtype: np.dtype | str,
                 channels: tuple[str, ...] = (), name: str = "", crash_safe: bool = False) -> None:
        self.path = Path(path)
        self.crash_safe = crash_safe
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.dtype = np.dtype(dtype)
        self.channels = tuple(channels)
        self.name = name or self.path.name.split(".")[0]
        self.metadata: list[dict[str, Any]] = []
        self._tif = tifffile.TiffWriter(self.path, bigtiff=True)
        self._closed = False

    def __len__(self) -> int:
        return len(self.metadata)

    def write(self, planes: np.ndarray | list[np.ndarray], metadata: dict[str, Any] | None = None) -> None:
        """One time point: a 2-D frame, or one frame per channel."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer is closed")
        items = [planes] if isinstance(planes, np.ndarray) and planes.ndim == 2 else list(planes)
        if len(items) != max(1, len(self.channels)):
            raise ValueError(f"expected {max(1, len(self.channels))} plane(s) per frame, got {len(items)}")
        for plane in items:  # all checked before any is written: channels never get out of step
            if plane.shape != self.frame_shape:
                raise ValueError(f"expected frames of shape {self.frame_shape}, got {plane.shape}")
        for plane in items:
            self._tif.write(np.ascontiguousarray(plane, dtype=self.dtype), contiguous=not self.crash_safe,
                            metadata=None, description=" " * 16)
        if self.crash_safe:  # each page whole in the file: a killed process keeps it
            self._tif.filehandle.flush()
        self.metadata.append(dict(metadata or {}))

    def close(self) -> None:
        """Finish the file: the OME-XML for the frames written so far."""
        if self._closed:
            return
        self._closed = True
        self._tif.close()
        n = len(self.metadata)
        if n == 0:
            self.path.unlink(missing_ok=True)
            return
        nc = max(1, len(self.channels))
        h, w = self.frame_shape
        shape: tuple[int, ...] = (n, nc, h, w) if self.channels else (n, h, w)
        planes: dict[str, list[Any]] = {}
        elapsed = [m.get("ElapsedTime-ms") for m in self.metadata]
        if all(isinstance(v, (int, float)) for v in elapsed):
            planes["DeltaT"] = [float(v) for v in elapsed for _ in range(nc)]  # type: ignore[arg-type]
            planes["DeltaTUnit"] = ["ms"] * (n * nc)
        exposure = [m.get("Exposure-ms") for m in self.metadata]
        if all(isinstance(v, (int, float)) for v in exposure):
            planes["ExposureTime"] = [float(v) for v in exposure for _ in range(nc)]  # type: ignore[arg-type]
            planes["ExposureTimeUnit"] = ["ms"] * (n * nc)
        ome = tifffile.OmeXml()
        kwargs: dict[str, Any] = {"Name": self.name, "CommentAnnotation": {
            "Namespace": self.METADATA_NAMESPACE, "Value": json.dumps(self.metadata, default=str)}}
        if planes:
            kwargs["Plane"] = planes
        if self.channels:
            kwargs["Channel"] = {"Name": list(self.channels)}
        ome.addimage(self.dtype, shape, (n * nc, 1, 1, h, w, 1), axes="TCYX" if self.channels else "TYX", **kwargs)
        tifffile.tiffcomment(self.path, ome.tostring())

    def __enter__(self) -> OmeTiffWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr")


def next_file(path: str | Path) -> Path:
    """Where a recording at ``path`` goes on in a new file (or folder) beside it: ``bridge_2.ome.tif``, then
    ``bridge_3.ome.tif`` … (``raw`` → ``raw_2``), the first that does not exist: an earlier file is never written
    over."""
    path = Path(path)
    name = path.name
    cut = len(name) - len(next((s for s in _SUFFIXES if name.lower().endswith(s)), path.suffix))
    stem, suffix = name[:cut] or name, name[cut:]
    n = 2
    while (candidate := path.with_name(f"{stem}_{n}{suffix}")).exists():
        n += 1
    return candidate


class OmeTiffParts:
    """An OME-TIFF recording of frames of whatever size comes: an OME-TIFF holds one plane size, so the first frame of
    another size (a new ROI, another binning) begins a file for that size beside the first (:func:`next_file`:
    ``bridge_2.ome.tif`` …, the first free name: nothing there is written over), said in one log line, and every
    later frame of a size goes to that size's file: a size that comes back (a ROI cleared, a binned channel among
    others) goes on in its own file, so the files are one per size, never one per change. Each frame's metadata
    keeps its own place and time. :attr:`paths` lists the files in the order they were begun (those holding
    frames); the first is ``path``, opened at the first frame. ``dtype``, ``channels``, ``name`` and ``crash_safe``
    as :class:`OmeTiffWriter`'s, for every file; ``what`` names the recording in the log line."""

    def __init__(self, path: str | Path, dtype: np.dtype | str, channels: tuple[str, ...] = (), name: str = "",
                 what: str = "the recording", crash_safe: bool = False) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.channels = tuple(channels)
        self.name = name
        self.what = what
        self.crash_safe = crash_safe
        self.paths: list[Path] = []
        self.frames = 0
        self._writers: dict[tuple[int, ...], OmeTiffWriter] = {}  # one per frame size

    def __len__(self) -> int:
        return self.frames

    def write(self, planes: np.ndarray | list[np.ndarray], metadata: dict[str, Any] | None = None) -> Path:
        """One time point (as :meth:`OmeTiffWriter.write`); the file it went to. A time point that is not one 2-D
        plane per channel, all of one size, is refused (``ValueError``) before any file is finished or begun."""
        items = [planes] if isinstance(planes, np.ndarray) and planes.ndim == 2 else list(planes)
        if len(items) != max(1, len(self.channels)):
            raise ValueError(f"expected {max(1, len(self.channels))} plane(s) per frame, got {len(items)}")
        shape = tuple(int(v) for v in np.shape(items[0]))
        if len(shape) != 2 or any(tuple(np.shape(p)) != shape for p in items):
            raise ValueError(f"expected 2-D planes of one size, got shapes {[tuple(np.shape(p)) for p in items]}")
        writer = self._writers.get(shape)
        if writer is None:
            writer = self._open(shape)
        writer.write(items, metadata)
        self.frames += 1
        return writer.path

    def _open(self, shape: tuple[int, ...]) -> OmeTiffWriter:
        path = next_file(self.path) if self.paths else self.path
        if self._writers:
            sizes = ", ".join(f"{s[1]}x{s[0]}" for s in self._writers)
            log.warning("%s: frames of %dx%d came after frames of %s (a new ROI or binning): %s continues in %s "
                        "for frames of that size (a file per frame size)", self.path.name, shape[1], shape[0], sizes,
                        self.what, path)
        writer = OmeTiffWriter(path, shape, self.dtype, channels=self.channels,  # type: ignore[arg-type]
                               name=self.name, crash_safe=self.crash_safe)
        self._writers[shape] = writer
        self.paths.append(path)
        return writer

    def close(self) -> None:
        """Finish every file (idempotent); a file left without frames (removed by its close) leaves :attr:`paths`."""
        while self._writers:
            _, writer = self._writers.popitem()
            writer.close()
            if len(writer) == 0 and writer.path in self.paths:
                self.paths.remove(writer.path)

    def __enter__(self) -> OmeTiffParts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_frame_metadata(path: str | Path) -> list[dict[str, Any]]:
    """The per-frame metadata :class:`OmeTiffWriter` stored (empty for other files)."""
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    if not xml:
        return []
    tree = tifffile.xml2dict(xml)
    notes = tree.get("OME", {}).get("StructuredAnnotations", {}).get("CommentAnnotation", [])
    for note in notes if isinstance(notes, list) else [notes]:
        if isinstance(note, dict) and note.get("Namespace") == OmeTiffWriter.METADATA_NAMESPACE:
            return list(json.loads(note["Value"]))
    return []
