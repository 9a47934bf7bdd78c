"""TIFF / OME-TIFF / ImageJ hyperstacks in, OME-TIFF out.

Reading is a plane range at a time (each plane is a TIFF page). The OME-XML's physical sizes, channel
names and per-plane attributes are kept; the full per-plane metadata ``n2n`` writes (and reads back) is a
JSON ``CommentAnnotation``, since OME's ``Plane`` holds only a few standard fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .base import AXIS_ORDER, DatasetError, DatasetInfo, PlanesUnreadable

__all__ = ["PLANE_METADATA_NAMESPACE", "OmeTiffReader", "write_ome_tiff"]

PLANE_METADATA_NAMESPACE = "n2n-live:plane-metadata"
_FRAME_METADATA_NAMESPACE = "n2n-live:frame-metadata"  # n2n grab / bridge recordings: one entry per time point
_GENERIC_TIME = "QI"  # unlabelled stacks (plain TIFF, image sequences): their frames are time points
_PLANE_FIELDS = ("DeltaT", "DeltaTUnit", "ExposureTime", "ExposureTimeUnit", "PositionX", "PositionXUnit",
                 "PositionY", "PositionYUnit", "PositionZ", "PositionZUnit")


_CAPTURE = threading.local()


class _Capture(logging.Filter):
    """tifffile logs what it finds damaged (a page offset past the end of the file, a tag it cannot read) and
    goes on; while a reader opens or reads a file, those messages are kept for its report, not printed."""

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(_CAPTURE, "sink", None)
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


logging.getLogger("tifffile").addFilter(_Capture())


@contextlib.contextmanager
def _captured(sink: list[str]) -> Iterator[list[str]]:
    previous = getattr(_CAPTURE, "sink", None)
    _CAPTURE.sink = sink
    try:
        yield sink
    finally:
        _CAPTURE.sink = previous


MISSING = "not in the file (cut short or damaged: its pages end before)"
PAST_END = "pixel data past the end of the file (cut short)"


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


class OmeTiffReader:
    """A TIFF file's first series, in TCZYX order whatever order its pages are in."""

    kind = "tiff"

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self.path = Path(path)
        self._lock = threading.Lock()  # one file handle: a seek and its read must not interleave with another's
        self.damage: list[str] = []
        """What is wrong with the file as a whole (cut short, metadata lost), found when it was opened."""
        self.notes: dict[str, str] = {}
        """The OME-XML's CommentAnnotations: their text by namespace (n2n's records, e.g. ``n2n denoise``'s)."""
        self.frame_metadata = False
        """The per-plane metadata was recorded once per time point (``n2n bridge`` / ``n2n grab``), every channel
        of a time point given the same: in a bridge recording, ``n2n-denoised`` there speaks of the ``denoised``
        channel only (its ``raw`` channel holds the camera's frames)."""
        notes: list[str] = []
        with _captured(notes):
            try:
                self._tif = tifffile.TiffFile(self.path)
            except Exception as exc:  # tifffile raises several types for files it cannot read
                raise DatasetError(f"{self.path}: not a readable TIFF file ({exc})") from None
            try:
                self.info, self._order = self._describe()
                self._check_pages(notes)
            except Exception:
                self._tif.close()
                raise

    def _describe(self) -> tuple[DatasetInfo, tuple[int, ...]]:
        import tifffile

        if not self._tif.series:
            raise DatasetError(f"{self.path}: holds no image data")
        if len(self._tif.series) > 1:
            raise DatasetError(f"{self.path}: holds {len(self._tif.series)} image series (stage positions?); expected "
                               "one: save each position to its own file")
        series = self._tif.series[0]
        axes, shape = series.axes, series.shape  # length-1 axes dropped, as Fiji shows them
        self._direct = False  # read pages by their index in the file, not through the series
        declared = self._declared_shape(series)
        if declared is not None:  # the file says more planes than its pages hold: the missing ones are named
            axes, shape = declared
            self._direct = True
        kept: list[tuple[str, int]] = []
        for a, n in zip(axes, shape):
            letter = "T" if a in _GENERIC_TIME else a
            if letter in AXIS_ORDER:
                if letter in (k[0] for k in kept):
                    raise DatasetError(f"{self.path}: axis {letter} appears twice (axes {axes!r})")
                kept.append((letter, n))
            elif n != 1:
                what = "RGB samples" if a == "S" else f"axis {a!r}"
                raise DatasetError(f"{self.path}: expected axes among T, C, Z, Y, X (fluorescence planes), got "
                                   f"{what} of size {n} (axes {axes!r}, shape {tuple(shape)})")
        file_axes = "".join(a for a, _ in kept)
        if not file_axes.endswith("YX"):
            raise DatasetError(f"{self.path}: expected Y and X as the last axes, got axes {axes!r}")
        canonical = "".join(sorted(file_axes, key=AXIS_ORDER.index))
        size = dict(kept)
        lead_file = [a for a in file_axes[:-2]]
        # page order: the file's leading axes; our planes: TCZ order. _order[p] = page index of plane p
        lead_shape = [size[a] for a in canonical[:-2]]
        coords = np.indices(lead_shape).reshape(len(lead_shape), -1) if lead_shape else np.zeros((0, 1), int)
        by_axis = dict(zip(canonical[:-2], coords))
        order = (np.ravel_multi_index([by_axis[a] for a in lead_file], [size[a] for a in lead_file])
                 if lead_file else np.zeros(1, int))
        info = DatasetInfo(axes=canonical, shape=tuple(size[a] for a in canonical), dtype=series.dtype,
                           name=self.path.name.split(".")[0])
        xml = self._tif.ome_metadata
        if xml:
            self._read_ome(tifffile.xml2dict(xml), info)
        elif self._tif.imagej_metadata:
            self._read_imagej(self._tif.imagej_metadata, info)
        return info, tuple(int(v) for v in order)

    def _declared_shape(self, series: Any) -> tuple[str, tuple[int, ...]] | None:
        """The shape tifffile's own metadata (``shaped``) declares where its series fell back to fewer planes
        because pages are missing (tifffile logs "failed to reshape" and gives the first page alone)."""
        shaped = self._tif.shaped_metadata
        if not shaped or self._tif.ome_metadata or self._tif.imagej_metadata:
            return None
        declared = shaped[0].get("shape") if isinstance(shaped[0], dict) else None
        if not isinstance(declared, list) or len(declared) < 2:
            return None
        declared_shape = tuple(int(v) for v in declared)
        planes = int(np.prod(declared_shape[:-2], dtype=np.int64))
        if tuple(series.shape[-2:]) != declared_shape[-2:] or planes <= int(np.prod(series.shape[:-2] or (1,))):
            return None
        lead = [n for n in declared_shape[:-2] if n != 1]
        labelled = shaped[0].get("axes")
        if isinstance(labelled, str) and len(labelled) == len(declared_shape):
            kept = [(a, n) for a, n in zip(labelled, declared_shape) if n != 1 or a in "YX"]
            return "".join(a for a, _ in kept), tuple(n for _, n in kept)
        if len(lead) > 1:
            return None  # unlabelled axes beyond one: not guessed
        return ("QYX" if lead else "YX"), (*lead, *declared_shape[-2:])

    def _page_keys(self) -> list[int | None]:
        """Per plane (flat index): its key for reading (the page's index in the series, or in the file when
        read directly); None for a plane the file does not hold."""
        if self._direct:
            pages = len(self._tif.pages)
            return [k if k < pages else None for k in self._order]
        series_pages = self._tif.series[0].pages
        return [k if k < len(series_pages) and series_pages[k] is not None else None for k in self._order]

    def _page(self, key: int) -> Any:
        return self._tif.pages[key] if self._direct else self._tif.series[0].pages[key]

    def _check_pages(self, notes: list[str]) -> None:
        """Find the damage a reader of the file would otherwise not see: a page chain that breaks (points past
        the end of the file: cut short), planes the metadata lists that no page holds, metadata lost."""
        tif = self._tif
        pages = len(tif.pages)  # walks the whole page chain
        self._keys = self._page_keys()
        self._missing = {p: MISSING for p, k in enumerate(self._keys) if k is None}
        fh = tif.filehandle
        nxt = 0
        try:
            where = tif.pages.next_page_offset
            if where is not None:
                fh.seek(where)
                nxt = struct.unpack(tif.tiff.offsetformat, fh.read(tif.tiff.offsetsize))[0]
        except (struct.error, OSError, ValueError):
            nxt = -1
        if nxt:
            past = nxt < 0 or nxt >= fh.size
            self.damage.append(f"its chain of pages breaks after page {pages - 1} (the next page's offset "
                               f"{'lies past the end of the file' if past else 'holds no page'}): the file is cut "
                               "short or damaged" + ("" if self._missing else "; how many planes followed is "
                                                     "unknown, its metadata does not say"))
        if any("invalid value offset" in n or "corrupted tag list" in n for n in notes):
            self.damage.append("some of its metadata lies past the end of the file (lost: e.g. the OME-XML, "
                               "written last)")

    def _pixel_problem(self, key: int) -> str | None:
        page = self._page(key)
        size = page.parent.filehandle.size
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if count and (offset <= 0 or offset + count > size):
                return PAST_END
        return None

    def read_available(self, start: int, stop: int) -> tuple[np.ndarray, dict[int, str]]:
        """Planes ``start:stop`` and those that cannot be read: {plane: why} (their rows are zeros)."""
        stop = min(stop, self.info.planes)
        out = np.zeros((max(0, stop - start), *self.info.plane_shape), self.info.dtype)
        bad: dict[int, str] = {p: self._missing[p] for p in range(start, stop) if p in self._missing}
        notes: list[str] = []
        with self._lock, _captured(notes):
            good = []
            for p in range(start, stop):
                if p in bad:
                    continue
                problem = self._pixel_problem(self._key(p))
                if problem:
                    bad[p] = problem
                else:
                    good.append(p)
            try:
                if good:
                    out[[p - start for p in good]] = self._asarray([self._key(p) for p in good])
            except Exception:
                for p in good:
                    try:
                        out[p - start] = self._asarray([self._key(p)])[0]
                    except Exception as exc:
                        detail = " ".join(str(exc).split()) or "no message"
                        bad[p] = f"its pixel data cannot be decoded ({type(exc).__name__}: {detail})"[:300]
        return out, bad

    def _key(self, plane: int) -> int:
        key = self._keys[plane]
        assert key is not None, plane
        return key

    def _asarray(self, keys: list[int]) -> np.ndarray:
        data = (self._tif.asarray(key=keys) if self._direct else self._tif.asarray(key=keys, series=0))
        return np.asarray(data).reshape(len(keys), *self.info.plane_shape)

    def _read_ome(self, tree: dict[str, Any], info: DatasetInfo) -> None:
        image = _items(tree.get("OME", {}).get("Image"))
        pixels = image[0].get("Pixels", {}) if image else {}
        for axis, key in (("X", "PhysicalSizeX"), ("Y", "PhysicalSizeY"), ("Z", "PhysicalSizeZ"),
                          ("T", "TimeIncrement")):
            if isinstance(pixels.get(key), (int, float)):
                info.physical[axis] = (float(pixels[key]), pixels.get(f"{key}Unit", "s" if axis == "T" else "µm"))
        # OME-XML numbers read as numbers (a channel named "488"): names are text
        names = [None if c.get("Name") is None else str(c.get("Name")) for c in _items(pixels.get("Channel"))]
        channels = info.shape[info.axes.index("C")] if "C" in info.axes else 1
        if names and all(n is not None for n in names) and len(names) == channels:
            info.channel_names = [str(n) for n in names]
        notes = _items(tree.get("OME", {}).get("StructuredAnnotations", {}).get("CommentAnnotation"))
        by_space = {n.get("Namespace"): n.get("Value") for n in notes if isinstance(n, dict)}
        self.notes = {str(k): str(v) for k, v in by_space.items() if k and v is not None}
        if PLANE_METADATA_NAMESPACE in by_space:
            meta = json.loads(str(by_space[PLANE_METADATA_NAMESPACE]))
            if isinstance(meta, list) and len(meta) == info.planes:
                info.plane_metadata = meta
                return
        plane_meta: list[dict[str, Any]] = [{} for _ in range(info.planes)]
        lead = info.axes[:-2]
        for plane in _items(pixels.get("Plane")):
            coords = {a: int(plane.get(f"The{a}", 0)) for a in lead}
            try:
                p = int(np.ravel_multi_index([coords[a] for a in lead], info.shape[:-2])) if lead else 0
            except ValueError:
                continue
            plane_meta[p].update({k: plane[k] for k in _PLANE_FIELDS if k in plane})
        frames = by_space.get(_FRAME_METADATA_NAMESPACE)
        if frames and "T" in info.axes:
            per_t = json.loads(frames)
            if isinstance(per_t, list) and len(per_t) == info.shape[0]:
                for p in range(info.planes):
                    plane_meta[p] = {**per_t[info.index(p)["T"]], **plane_meta[p]}
                self.frame_metadata = True
        if any(plane_meta):
            info.plane_metadata = plane_meta

    def _read_imagej(self, ij: dict[str, Any], info: DatasetInfo) -> None:
        if "unit" not in ij:  # an uncalibrated stack: its resolution of 1 is no pixel size
            if isinstance(ij.get("finterval"), (int, float)) and "T" in info.axes:
                info.physical["T"] = (float(ij["finterval"]), "s")
            return
        unit = ij["unit"]
        unit = "µm" if unit in ("micron", "um", "\\u00B5m") else unit
        if isinstance(ij.get("spacing"), (int, float)) and "Z" in info.axes:
            info.physical["Z"] = (float(ij["spacing"]), unit)
        if isinstance(ij.get("finterval"), (int, float)) and "T" in info.axes:
            info.physical["T"] = (float(ij["finterval"]), "s")
        page = self._tif.pages.first
        res = page.tags.get("XResolution")
        if res is not None:
            num, den = res.value
            if num and den:
                info.physical["X"] = info.physical["Y"] = (den / num, unit)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Planes ``start:stop``; :class:`PlanesUnreadable` when any cannot be read (see :meth:`read_available`)."""
        out, bad = self.read_available(start, stop)
        if bad:
            raise PlanesUnreadable(self.path, bad)
        return out

    def close(self) -> None:
        self._tif.close()


_OME_UNITS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "second": "s", "millisecond": "ms",
              "minute": "min", "um": "µm", "micron": "µm"}


def _ome_unit(unit: str | None, default: str) -> str:
    return _OME_UNITS.get(unit or "", unit or default)


def write_ome_tiff(path: str | Path, info: DatasetInfo, planes: Iterator[np.ndarray], dtype: np.dtype,
                   notes: list[dict[str, str]] | None = None) -> None:
    """Write an OME-TIFF (axes, physical sizes, channel names, per-plane metadata) from planes in flat order;
    written to a temporary name and renamed, so the file at ``path`` is whole or absent. ``notes``: more
    CommentAnnotations ({"Namespace", "Value"})."""
    import tifffile

    path = Path(path)
    meta: dict[str, Any] = {"axes": info.axes, "Name": info.name or path.name.split(".")[0]}
    for axis, key in (("X", "PhysicalSizeX"), ("Y", "PhysicalSizeY"), ("Z", "PhysicalSizeZ"), ("T", "TimeIncrement")):
        if axis in info.physical and (axis in info.axes or axis in "XY"):
            value, unit = info.physical[axis]
            if not value > 0 or (axis == "T" and not unit):  # no size, or frame numbers: none written
                continue
            meta[key] = float(value)
            meta[f"{key}Unit"] = _ome_unit(unit, "s" if axis == "T" else "µm")
    if info.channel_names:
        meta["Channel"] = {"Name": list(info.channel_names)}
    if info.plane_metadata:
        fields = {k: [m.get(k) for m in info.plane_metadata] for k in _PLANE_FIELDS}
        plane = {k: v for k, v in fields.items() if all(x is not None for x in v)}
        if plane:
            meta["Plane"] = plane
        meta["CommentAnnotation"] = [{"Namespace": PLANE_METADATA_NAMESPACE,
                                      "Value": json.dumps(info.plane_metadata, default=str)}]
    if notes:
        meta["CommentAnnotation"] = [*meta.get("CommentAnnotation", []), *notes]
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            tif.write((np.asarray(p, dtype=dtype) for p in planes), shape=info.shape, dtype=dtype,
                      metadata=meta, photometric="minisblack")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
