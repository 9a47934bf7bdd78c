"""The pycromanager hook's raw record (``keep_raw``): every raw image exactly, or not at all, where it was acquired.

What a microscopist gets depends on the path given, decided when the hook is made:

* **a folder** (any path without a ``.tif``/``.tiff`` suffix): an NDTiff dataset, pycromanager's own format (written
  with ``ndstorage``), each image at its ``Axes`` (time, channel, z, position, …) with its whole metadata: the
  acquisition's shape, whatever its axes. pycromanager's ``Dataset`` / ``ndstorage`` and ``n2n denoise`` read it.
  Each image's index entry goes to disk with it: after a crash the dataset opens with every image saved before it,
  at its axes, with its metadata.
* **a file** ending in ``.tif``/``.tiff`` (``raw.ome.tif``): one OME-TIFF, TYX, the images in the order they came,
  each image's metadata in its plane. It holds a time series only: an axis besides ``time`` may be there if it
  keeps the first saved image's value (one channel, one position); an image where it changes (another channel, z,
  position, …) is refused, never flattened into T, and the reason names the folder form. Each image is its own
  TIFF page, on disk as it is saved; the OME-XML (axes, each image's metadata, ``DeltaT``) is written at
  :meth:`OmeTiffRecord.close`. After a crash the file is a plain multi-page TIFF of every image saved before it,
  bit-exact (``tifffile.imread`` gives an (N, Y, X) array, any TIFF reader N pages), without its metadata.

The rule of both: the path must hold no record yet (an existing file, a folder that holds files: refused when the
hook is made, and again before the first image, never written over); an image the record cannot hold exactly
(pixels another dtype would change; an axis it cannot keep; a place and time saved already) is refused
(:class:`RawRefused`, with why). Both hold one image size: an the first image of another size (a new ROI or binning
mid-acquisition) begins a record of the same form beside it for that size (``raw_2``, ``raw_2.ome.tif``, …: the
first free name, :func:`~streamer.sources.next_file`, so nothing there is written over), said in one log line, and
every later image goes to its size's record (one per size, never one per change); ``paths`` lists them in the order
they were begun. They are one record split
by size: the continuation is written as the first is (crash-safe alike), and the rules above hold across all of
them (the dtype is the first image's; a ``.ome.tif`` record's axes besides time keep the first image's value and a
time point, a folder record's place, is saved once in all of them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..sources import OmeTiffParts, next_file

__all__ = ["NdTiffRecord", "OmeTiffRecord", "RawRecord", "RawRefused", "lossless_problem", "open_record",
           "plain_metadata"]

log = logging.getLogger("n2n.micromanager")

TIFF_SUFFIXES = (".tif", ".tiff")
NDTIFF_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
"""The pixels an NDTiff dataset holds (single-channel images): what Micro-Manager cameras give."""


class RawRefused(ValueError):
    """An image the record cannot hold exactly (its pixels or its axes): not saved, counted, said."""


class RawRecord(Protocol):
    path: Path

    @property
    def paths(self) -> list[Path]:
        """The records written, in order: ``path``, then one beside it per change of image size."""

    def save(self, image: np.ndarray, meta: dict[str, Any]) -> None:
        """Save ``image`` (2-D) with ``meta`` exactly; :class:`RawRefused` when the record cannot hold it, or
        whatever its writer raises (``OSError`` for a full disk, …: the hook takes any exception as not saved)."""

    def close(self) -> None:
        """Finish the record (idempotent)."""


def open_record(path: str | Path) -> RawRecord:
    """The record ``path`` names (see the module docstring); nothing is written until the first image comes.
    Raises ``ValueError`` at once for a path it would not write: an existing file, a folder that holds files, an
    OME-Zarr path."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return OmeTiffRecord(path)
    if path.suffix.lower() == ".zarr":
        raise ValueError(f"keep_raw: expected a folder (an NDTiff dataset of the acquisition's axes) or a .ome.tif "
                         f"file (a time series), got {path}: the hook does not write OME-Zarr")
    return NdTiffRecord(path)


def _refuse_used(path: Path, folder: bool) -> None:
    """``ValueError`` (one line, saying how to go on) when ``path`` holds something a new record would write over:
    a file, or a folder that holds files (an empty one is taken as a folder record's)."""
    if not path.exists() or (folder and path.is_dir() and not any(path.iterdir())):
        return
    what = "a file" if not path.is_dir() else "a folder that holds files" if any(path.iterdir()) else "a folder"
    expected = "a new or empty folder for the raw images (an NDTiff dataset)" if folder else \
        "a new file for the raw images (an OME-TIFF)"
    raise ValueError(f"keep_raw: expected {expected}, got {path}, {what}: a record is never written over another; "
                     "give keep_raw another name, or delete it first")


def lossless_problem(image: np.ndarray, dtype: np.dtype) -> str | None:
    """Why ``image`` cannot be stored as ``dtype`` exactly (None: it can): NaN or infinity into integers,
    values outside the type's range, fractions into integers, precision a narrower float loses."""
    dtype = np.dtype(dtype)
    if image.dtype == dtype:
        return None
    if image.dtype.kind not in "biuf" or dtype.kind not in "biuf":
        return f"expected {dtype} pixels (the file's), got {image.dtype}, which it cannot hold"
    if image.dtype.kind == "f" and dtype.kind in "biu":
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            return f"{bad} NaN/infinite pixel(s) cannot be stored as {dtype}"
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = (image.min(), image.max()) if image.size else (0, 0)
        if low < info.min or high > info.max:
            return (f"{image.dtype} values {low}..{high} do not fit {dtype} ({info.min}..{info.max}): they would "
                    "wrap or clip")
    with np.errstate(all="ignore"):
        back = image.astype(dtype).astype(image.dtype)
    if not np.array_equal(back, image, equal_nan=image.dtype.kind == "f"):
        return f"{image.dtype} values would change stored as {dtype} (fractions or precision lost)"
    return None


def plain_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of pycromanager metadata (numbers, text, lists, dicts)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
        elif isinstance(v, dict):
            out[str(k)] = plain_metadata(v)
        elif isinstance(v, (list, tuple)):
            out[str(k)] = [x if isinstance(x, (str, int, float, bool)) else str(x) for x in v]
        else:
            out[str(k)] = str(v)
    return out


def _check_image(image: np.ndarray) -> None:
    if image.dtype.kind not in "biuf" or image.ndim != 2:
        raise ValueError(f"expected a 2-D image of integer or float pixels, got {image.dtype} of shape {image.shape}")


def _closed(path: Path) -> ValueError:
    return ValueError(f"the raw record {path} is closed (hook.close() was called): a new hook keeps a new record")


class OmeTiffRecord:
    """One OME-TIFF, TYX (a time series): the first saved image sets the shape, the dtype and the value of any axis
    besides time; the first image of another shape begins a file for that shape beside it (:attr:`paths`), the
    same series: the same dtype and axes, each time point once in all of them, every file crash-safe."""

    def __init__(self, path: Path) -> None:
        _refuse_used(path, folder=False)
        self.path = path
        self._writer: OmeTiffParts | None = None  # one OME-TIFF per image size (a new ROI: the next beside it)
        self._fixed: dict[str, Any] | None = None  # the first saved image's axes besides time (every file's)
        self._times: dict[Any, Path] = {}  # the time points saved, and the file each went to
        self._closed = False

    @property
    def paths(self) -> list[Path]:
        return list(self._writer.paths) if self._writer is not None else []

    def save(self, image: np.ndarray, meta: dict[str, Any]) -> None:
        if self._closed:
            raise _closed(self.path)
        axes = meta.get("Axes")
        axes = axes if isinstance(axes, dict) else {}
        other = {str(k): v for k, v in axes.items() if k != "time"}
        if self._fixed is not None and other != self._fixed:
            changed = sorted(set(other) | set(self._fixed))
            changed = [k for k in changed if other.get(k) != self._fixed.get(k)]
            were = ", ".join(f"{k}={self._fixed.get(k)!r}" for k in changed)
            now = ", ".join(f"{k}={other.get(k)!r}" for k in changed)
            raise RawRefused(f"{self.path.name} is one OME-TIFF time series at {were} (its first image's): this "
                             f"image's {now} would be flattened into T; give keep_raw a folder instead: an NDTiff "
                             "dataset of the acquisition's axes")
        time_point = axes.get("time")
        if isinstance(time_point, np.integer):
            time_point = int(time_point)
        elif time_point is not None and not isinstance(time_point, int | str):
            time_point = str(time_point)
        if time_point is not None and time_point in self._times:
            raise RawRefused(f"an image at time={time_point!r} is in {self._times[time_point].name} already: the "
                             "record keeps one image per time point, never overwrites it")
        _check_image(image)  # every image: one that is not 2-D never finishes a file as a "new size"
        if self._writer is None:
            _refuse_used(self.path, folder=False)  # made since the hook was (another hook's record): never over it
            self._writer = OmeTiffParts(self.path, image.dtype, name="raw", what="the raw record", crash_safe=True)
        problem = lossless_problem(image, self._writer.dtype)
        if problem is not None:
            raise RawRefused(f"not saved exactly in {self.path}: {problem}")
        written = self._writer.write(image.astype(self._writer.dtype, copy=False), plain_metadata(meta))
        if self._fixed is None:
            self._fixed = other
        if time_point is not None:
            self._times[time_point] = written

    def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()  # (kept: its paths)


class NdTiffRecord:
    """An NDTiff dataset in the folder ``path``, each image at its ``Axes``; an image without ``Axes`` is put at the
    next time point of those without. The first saved image sets the shape and the dtype (uint8 or uint16, what
    NDTiff holds: another dtype is kept as uint16 where its values fit exactly); the first image of another shape
    begins a dataset for that shape beside it (:attr:`paths`), of the same dtype, and every later image of a shape
    goes to that shape's dataset (a dataset per image size, never one per change), each place once in all of them."""

    def __init__(self, path: Path) -> None:
        _refuse_used(path, folder=True)
        self.path = path
        self.paths: list[Path] = []
        self.dtype: np.dtype | None = None
        self.shape: tuple[int, ...] | None = None  # the first image's
        self._ds: Any = None  # the dataset of the image being saved
        self._datasets: dict[tuple[int, ...], tuple[Any, Path]] = {}  # one per image size
        self._saved: dict[frozenset[tuple[str, int | str]], Path] = {}  # the places saved, and the dataset of each
        self._untimed = 0  # images saved without Axes: their time points
        self._closed = False

    def _coordinates(self, axes: Any) -> dict[str, int | str]:
        if not isinstance(axes, dict) or not axes:
            return {"time": self._untimed}
        coords: dict[str, int | str] = {}
        for name, value in axes.items():
            if isinstance(value, np.integer):
                value = int(value)
            if not isinstance(name, str) or not name or isinstance(value, bool) or not isinstance(value, int | str) \
                    or value == "":
                raise RawRefused(f"expected Axes of names and integer or text values (as pycromanager gives), got "
                                 f"{name!r}: {value!r:.60}")
            coords[name] = value
        return coords

    def save(self, image: np.ndarray, meta: dict[str, Any]) -> None:
        if self._closed:
            raise _closed(self.path)
        axes = meta.get("Axes")
        coords = self._coordinates(axes)
        key = frozenset(coords.items())
        if key in self._saved:
            where = ", ".join(f"{k}={v!r}" for k, v in coords.items())
            raise RawRefused(f"an image at {where} is in {self._saved[key].name} already: the record keeps one image "
                             "per place, never overwrites it")
        _check_image(image)  # every image: one that is not 2-D never finishes a dataset as a "new size"
        if self.dtype is None:
            dtype = image.dtype if image.dtype in NDTIFF_DTYPES else np.dtype(np.uint16)
        else:
            dtype = self.dtype
        problem = lossless_problem(image, dtype)
        if problem is not None:
            raise RawRefused(f"not saved exactly in {self.path} (NDTiff: uint8 or uint16 pixels): {problem}")
        if image.shape not in self._datasets:  # the first image of this size: a dataset of its own
            path = next_file(self.path) if self.paths else self.path  # the first free name beside it
            if self._datasets:
                sizes = ", ".join(f"{s[1]}x{s[0]}" for s in self._datasets)
                log.warning("%s: an image of %dx%d came after images of %s (a new ROI or binning): the raw record "
                            "continues in %s for images of that size (a dataset per image size)", self.path.name,
                            image.shape[1], image.shape[0], sizes, path)
            self._datasets[image.shape] = (self._create(image, path), path)
            self.paths.append(path)
            if self.dtype is None:
                self.dtype, self.shape = np.dtype(dtype), image.shape
        self._ds, dataset = self._datasets[image.shape]
        writer = self._ds.current_writer
        self._ds.put_image(coords, np.ascontiguousarray(image, dtype=dtype), plain_metadata(meta))
        if writer is not None and self._ds.current_writer is not writer:  # a full stack file (4 GiB): the next one
            _close_reader(writer)
        index = getattr(self._ds, "_index_file", None)  # ndstorage buffers its index until finish(): each image's
        if index is not None:  # entry goes to disk with it, so a crash keeps every image saved before it
            index.flush()
        self._saved[key] = dataset
        if not isinstance(axes, dict) or not axes:
            self._untimed += 1

    def _create(self, image: np.ndarray, path: Path) -> Any:
        from ndstorage import NDTiffDataset

        _refuse_used(path, folder=True)  # filled since the hook was made (another hook's record): never over it
        ds = NDTiffDataset(dataset_path=str(path), writable=True)
        ds.initialize({"Source": "n2n-live denoise hook, keep_raw: the raw images of an acquisition at their axes",
                       "Width": int(image.shape[1]), "Height": int(image.shape[0])})
        return ds

    @staticmethod
    def _finish(ds: Any) -> None:
        """Finish one dataset."""
        writer = ds.current_writer
        try:
            ds.finish()
        finally:
            _close_reader(writer)
            ds.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ds = None
        while self._datasets:
            self._finish(self._datasets.popitem()[1][0])


def _close_reader(writer: Any) -> None:
    """ndstorage's stack-file writer opens a reader of its file and never closes it."""
    reader = getattr(writer, "reader", None)
    if reader is not None:
        reader.close()
