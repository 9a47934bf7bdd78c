"""What every recorded dataset is to ``n2n denoise``: axes, shape, dtype, physical sizes, channel names and
per-plane metadata, and its 2-D planes addressed by one flat index (C order over the axes before Y, X)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["AXIS_ORDER", "DatasetError", "DatasetInfo", "PlanesUnreadable", "Reader", "read_available"]

#: Axes a dataset may have, in the order OME-Zarr and OME-TIFF (TCZYX) use; Y, X always last.
AXIS_ORDER = "TCZYX"


class DatasetError(ValueError):
    """A dataset is missing, unreadable, or not what the command can work with; the message says what
    was expected and what came."""


class PlanesUnreadable(DatasetError):
    """Planes of a recording that cannot be read (a file cut short, a damaged chunk): ``planes`` maps each one's
    flat index to why, in a few words shared by planes that fail alike."""

    def __init__(self, path: Path | str, planes: dict[int, str]) -> None:
        self.planes = dict(planes)
        first = min(self.planes)
        super().__init__(f"{path}: cannot read {len(self.planes)} plane(s), the first {first} "
                         f"({self.planes[first]})")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PlanesUnreadable) and len(exc.planes) == 1:
        return next(iter(exc.planes.values()))
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"[:300]


def read_available(reader: Reader, start: int, stop: int) -> tuple[np.ndarray, dict[int, str]]:
    """Planes ``start:stop`` as :meth:`Reader.read` gives them, and those that could not be read: {plane: why}
    (their rows in the array are zeros). A reader that knows its damage says so itself (``read_available``);
    otherwise a range that fails is read again a plane at a time."""
    own = getattr(reader, "read_available", None)
    if own is not None:
        return own(start, stop)  # type: ignore[no-any-return]
    try:
        return reader.read(start, stop), {}
    except Exception:
        pass
    stop = min(stop, reader.info.planes)
    out = np.zeros((max(0, stop - start), *reader.info.plane_shape), reader.info.dtype)
    bad: dict[int, str] = {}
    for p in range(start, stop):
        try:
            out[p - start] = reader.read(p, p + 1)[0]
        except Exception as exc:
            bad[p] = _reason(exc)
    return out, bad


@dataclass
class DatasetInfo:
    """The description every format reads into and writes from (pixels aside)."""

    axes: str
    """Axis letters in :data:`AXIS_ORDER` order, ending in ``YX`` (e.g. ``TCZYX``, ``TYX``, ``YX``)."""
    shape: tuple[int, ...]
    dtype: np.dtype
    physical: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    """Axis → (spacing, unit): pixel sizes for X, Y, the Z step, the T interval."""
    channel_names: list[str] | None = None
    """One name per channel (one name also when the dataset has a single channel and no C axis)."""
    plane_metadata: list[dict[str, Any]] | None = None
    """One JSON-able dict per plane (flat index), as the acquisition recorded it; None: none recorded."""
    name: str = ""

    def __post_init__(self) -> None:
        self.shape = tuple(int(v) for v in self.shape)
        self.dtype = np.dtype(self.dtype).newbyteorder("=")  # planes are read in this machine's byte order
        if len(self.axes) != len(self.shape) or not self.axes.endswith("YX"):
            raise DatasetError(f"expected axes ending in YX, one per dimension of shape {self.shape}, "
                               f"got {self.axes!r}")
        if any(a not in AXIS_ORDER for a in self.axes) or list(self.axes) != sorted(self.axes, key=AXIS_ORDER.index):
            raise DatasetError(f"expected axes among {AXIS_ORDER} in that order, got {self.axes!r}")
        if self.plane_metadata is not None and len(self.plane_metadata) != self.planes:
            raise DatasetError(f"expected one metadata entry per plane ({self.planes}), got "
                               f"{len(self.plane_metadata)}")

    @property
    def planes(self) -> int:
        """Number of 2-D planes."""
        return int(np.prod(self.shape[:-2], dtype=np.int64)) if len(self.shape) > 2 else 1

    @property
    def plane_shape(self) -> tuple[int, int]:
        return (self.shape[-2], self.shape[-1])

    def index(self, plane: int) -> dict[str, int]:
        """The coordinates (axis letter → index) of a plane's flat index."""
        lead = self.shape[:-2]
        return dict(zip(self.axes[:-2], (int(v) for v in np.unravel_index(plane, lead)))) if lead else {}


class Reader(Protocol):
    """An open dataset: its description and its planes, read a range at a time (memory bounded by the
    range, never by the dataset). ``path`` and ``kind`` reopen it elsewhere (a Dask worker)."""

    path: Path
    kind: str
    info: DatasetInfo

    def read(self, start: int, stop: int) -> np.ndarray:
        """Planes ``start:stop`` (flat indices) as a (n, Y, X) array of the dataset's dtype. Safe to call from
        several threads at once (the tasks of a Dask worker with several threads share one reader)."""

    def close(self) -> None:
        """Release the files."""

    # optional: ``damage`` (list[str]): what is wrong with the recording as a whole (a file cut short), found
    # when it was opened; ``read_available(start, stop)``: see :func:`read_available`
