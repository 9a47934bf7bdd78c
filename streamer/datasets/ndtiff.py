"""NDTiff in: the format pycromanager's ``Acquisition`` (and Micro-Manager's acquisition engine) writes.

A dataset is a folder holding ``NDTiff.index`` and one or more ``*_NDTiffStack*.tif`` files; each image is
addressed by named axes (``time``, ``channel``, ``z``, ``position``, …), channel values often being channel
names. :mod:`ndstorage` reads it; this module maps those axes onto TCZYX, checks that the images fill the
grid, and reads planes by flat index.

Keys read (the ones pycromanager's acquisition engine, Python or Java, writes):

* summary ``PixelSize_um`` (or per image ``PixelSize_um`` / ``PixelSizeUm``) → X, Y pixel size, µm;
* summary ``z-step_um``, else the step between per-image ``ZPosition_um`` (or ``ZPosition_um_Intended``) → Z;
* summary ``Interval_ms``, else the step between per-image ``ElapsedTime-ms`` over time points → T, s;
* summary ``ChNames`` (Micro-Manager's own datasets) → channel order and names for integer channel axes,
  else per-image ``Channel``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from .base import DatasetError, DatasetInfo

__all__ = ["INDEX_NAME", "NdTiffReader", "find_ndtiff", "is_ndtiff"]

INDEX_NAME = "NDTiff.index"
_FULL_RES = "Full resolution"  # multi-resolution (tiled) datasets keep the full-resolution index here
_LETTERS = {"time": "T", "channel": "C", "z": "Z"}
_EXPECTED = ("expected an NDTiff dataset: a folder holding NDTiff.index (as pycromanager's Acquisition writes), "
             "its parent folder, or the NDTiff.index file")


def _is_dataset_folder(folder: Path) -> bool:
    return (folder / INDEX_NAME).is_file() or (folder / _FULL_RES / INDEX_NAME).is_file()


def find_ndtiff(path: str | Path) -> Path:
    """The dataset folder ``path`` names: the folder itself, its ``NDTiff.index``, or the parent folder
    holding exactly one dataset (``Acquisition(directory=D, name=N)`` writes ``D/N_1``)."""
    path = Path(path)
    if path.is_file():
        if path.name != INDEX_NAME:
            raise DatasetError(f"{path}: {_EXPECTED}")
        folder = path.parent
        return folder.parent if folder.name == _FULL_RES else folder
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder; {_EXPECTED}")
    if _is_dataset_folder(path):
        return path
    try:
        found = sorted(p for p in path.iterdir() if p.is_dir() and _is_dataset_folder(p))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found[:5]) + (", …" if len(found) > 5 else "")
        raise DatasetError(f"{path}: holds {len(found)} NDTiff datasets ({names}); give one of them")
    raise DatasetError(f"{path}: no NDTiff.index here or in a subfolder; {_EXPECTED}")


def is_ndtiff(path: Path) -> bool:
    """Whether ``path`` names an NDTiff dataset as :class:`NdTiffReader` accepts it (no file is opened)."""
    try:
        find_ndtiff(path)
    except DatasetError:
        return False
    return True


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, tuples and sets made JSON types (nothing dropped)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _positive(value: Any) -> float | None:
    return float(value) if _number(value) and value > 0 else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _ordered(values: Any) -> list[Any]:
    """An axis's values in ndstorage's order (sorted; older format versions keep them in a plain set)."""
    try:
        return sorted(values)
    except TypeError:  # mixed types: as given
        return list(values)


def _coordinate(coords: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in coords.items())


class NdTiffReader:
    """An NDTiff dataset's images as TCZYX planes (axes ``time``, ``channel``, ``z``; other axes may be
    present with one value only)."""

    kind = "ndtiff"

    def __init__(self, path: str | Path, metadata: bool = True) -> None:
        """``metadata=False``: axes, shape and pixels only (no per-plane metadata, names or sizes read)."""
        from ndstorage import Dataset

        self.path = find_ndtiff(path)
        self._metadata = metadata
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ndstorage prints its progress opening a dataset
                self._ds = Dataset(str(self.path))
        except Exception as exc:  # ndstorage raises bare Exceptions, struct and OS errors for damaged files
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise DatasetError(f"{self.path}: not a readable NDTiff dataset ({detail})") from None
        try:
            self.info, self._coords = self._describe()
        except Exception:
            self._ds.close()
            raise

    # --- description ------------------------------------------------------------------------------
    def _describe(self) -> tuple[DatasetInfo, list[dict[str, Any]]]:
        ds = self._ds
        summary = ds.summary_metadata if isinstance(ds.summary_metadata, dict) else {}
        values = {name: _ordered(vals) for name, vals in (ds.axes or {}).items()}
        if not values:
            raise DatasetError(f"{self.path}: holds no images")
        fixed: dict[str, Any] = {}
        for name, vals in values.items():
            if name in _LETTERS:
                continue
            if len(vals) != 1:
                raise DatasetError(f"{self.path}: expected axes among time, channel, z; got {name!r} with "
                                   f"{len(vals)} values")
            fixed[name] = vals[0]
        if "channel" in values:
            values["channel"] = self._channel_order(values["channel"], summary)
        lead = [name for name in ("time", "channel", "z") if name in values]
        coords = [{**dict(zip(lead, combo)), **fixed} for combo in itertools.product(*(values[n] for n in lead))]
        missing = [c for c in coords if not ds.has_image(**c)]
        if missing:
            raise DatasetError(f"{self.path}: {len(missing)} of {len(coords)} images missing (an acquisition "
                               f"stopped early?); first missing: {_coordinate(missing[0])}")

        first = np.asarray(ds.read_image(**coords[0]))
        if first.ndim != 2:
            raise DatasetError(f"{self.path}: expected single-channel 2-D images, got images of shape "
                               f"{first.shape} (RGB?)")
        axes = "".join(_LETTERS[n] for n in lead) + "YX"
        shape = (*(len(values[n]) for n in lead), *first.shape)
        if not self._metadata:
            return DatasetInfo(axes=axes, shape=shape, dtype=first.dtype, name=self.path.name), coords
        metadata = [_jsonable(ds.read_metadata(**c)) for c in coords]
        info = DatasetInfo(axes=axes, shape=shape, dtype=first.dtype, plane_metadata=metadata, name=self.path.name)
        if "channel" in values:
            info.channel_names = self._channel_names(values["channel"], summary, metadata, info)
        self._physical(info, summary, metadata)
        return info, coords

    @staticmethod
    def _channel_order(channels: list[Any], summary: dict[str, Any]) -> list[Any]:
        """String channels in the order the acquisition declared (``ChNames``) where it did, else the
        dataset's (ndstorage's: sorted)."""
        names = summary.get("ChNames")
        if isinstance(names, list) and all(isinstance(n, str) for n in [*names, *channels]) \
                and sorted(names) == sorted(channels):
            return list(names)
        return channels

    @staticmethod
    def _channel_names(channels: list[Any], summary: dict[str, Any], metadata: list[dict[str, Any]],
                       info: DatasetInfo) -> list[str] | None:
        if all(isinstance(c, str) for c in channels):
            return list(channels)
        names = summary.get("ChNames")
        if isinstance(names, list) and channels == list(range(len(channels))) and len(names) == len(channels) \
                and all(isinstance(n, str) for n in names):
            return list(names)
        at = info.axes.index("C")
        stride = int(np.prod(info.shape[at + 1:-2], dtype=np.int64))
        per_channel: list[set[Any]] = [set() for _ in channels]
        for p, meta in enumerate(metadata):
            per_channel[(p // stride) % len(channels)].add(meta.get("Channel"))
        if all(len(s) == 1 and isinstance(next(iter(s)), str) for s in per_channel):
            return [next(iter(s)) for s in per_channel]
        return None

    @staticmethod
    def _physical(info: DatasetInfo, summary: dict[str, Any], metadata: list[dict[str, Any]]) -> None:
        first = metadata[0] if metadata else {}
        pixel = next((v for v in (_positive(summary.get("PixelSize_um")), _positive(first.get("PixelSize_um")),
                                  _positive(first.get("PixelSizeUm"))) if v is not None), None)
        if pixel is not None:
            info.physical["X"] = info.physical["Y"] = (pixel, "µm")

        def step_along(axis: str, keys: tuple[str, ...]) -> float | None:
            """The median step of a per-image number along ``axis``, the other axes at their first index."""
            at = info.axes.index(axis)
            stride = int(np.prod(info.shape[at + 1:-2], dtype=np.int64))
            planes = [k * stride for k in range(info.shape[at])]
            for key in keys:
                series = [metadata[p].get(key) for p in planes]
                if all(_number(v) for v in series):
                    step = _positive(float(np.median(np.abs(np.diff(np.asarray(series, dtype=float))))))
                    if step is not None:
                        return step
            return None

        if "Z" in info.axes and info.shape[info.axes.index("Z")] > 1:
            z = _positive(summary.get("z-step_um"))
            if z is None:
                z = step_along("Z", ("ZPosition_um", "ZPosition_um_Intended"))
            if z is not None:
                info.physical["Z"] = (z, "µm")
        if "T" in info.axes and info.shape[0] > 1:
            t_ms = _positive(summary.get("Interval_ms"))
            if t_ms is None:
                t_ms = step_along("T", ("ElapsedTime-ms",))
            if t_ms is not None:
                info.physical["T"] = (t_ms / 1000, "s")

    # --- planes -----------------------------------------------------------------------------------
    def read(self, start: int, stop: int) -> np.ndarray:
        planes = range(self.info.planes)[start:stop]
        out = np.empty((len(planes), *self.info.plane_shape), self.info.dtype)
        for i, p in enumerate(planes):
            coords = self._coords[p]
            try:
                image = np.asarray(self._ds.read_image(**coords))
            except Exception as exc:  # a truncated or damaged stack file
                detail = " ".join(str(exc).split()) or type(exc).__name__
                raise DatasetError(f"{self.path}: cannot read the image at {_coordinate(coords)} ({detail})") from None
            if image.shape != out.shape[1:]:
                raise DatasetError(f"{self.path}: the image at {_coordinate(coords)} is {image.shape}, expected "
                                   f"{out.shape[1:]} like the first")
            out[i] = image
        return out

    def close(self) -> None:
        self._ds.close()
