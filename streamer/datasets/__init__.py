"""Recorded datasets for ``n2n denoise``: OME-TIFF / TIFF stacks, Micro-Manager NDTiff, OME-Zarr.

Every reader gives a :class:`DatasetInfo` (axes in TCZYX order, physical sizes, channel names,
per-plane metadata) and its 2-D planes a range at a time; outputs are OME-TIFF or OME-Zarr."""

from __future__ import annotations

from pathlib import Path

from .base import AXIS_ORDER, DatasetError, DatasetInfo, Reader

__all__ = ["AXIS_ORDER", "DatasetError", "DatasetInfo", "Reader", "input_kind", "open_dataset", "output_kind"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
ZARR_SUFFIXES = (".zarr",)


def input_kind(path: str | Path) -> str:
    """'tiff', 'zarr' or 'ndtiff' for an existing dataset; a one-line DatasetError otherwise."""
    from .ndtiff import is_ndtiff
    from .omezarr import is_zarr

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in TIFF_SUFFIXES:
        return "tiff"
    if is_zarr(path):
        return "zarr"
    if is_ndtiff(path):
        return "ndtiff"
    what = "a folder" if path.is_dir() else f"a {path.suffix or 'suffix-less'} file"
    raise DatasetError(f"{path}: expected an OME-TIFF/TIFF file (.tif, .tiff), an OME-Zarr folder (.zarr) or a "
                       f"Micro-Manager NDTiff dataset (a folder with NDTiff.index), got {what}")


def open_dataset(path: str | Path, kind: str | None = None, metadata: bool = True) -> Reader:
    """Open a recorded dataset for reading (format from its content; ``kind`` to skip the detection).
    ``metadata=False``: the planes only (a worker needs no per-plane metadata, which can be large)."""
    path = Path(path)
    kind = kind or input_kind(path)
    if kind == "tiff":
        from .ometiff import OmeTiffReader

        return OmeTiffReader(path)
    if kind == "zarr":
        from .omezarr import OmeZarrReader

        return OmeZarrReader(path, metadata)
    if kind == "ndtiff":
        from .ndtiff import NdTiffReader

        return NdTiffReader(path, metadata)
    raise DatasetError(f"expected a dataset kind among tiff, zarr, ndtiff, got {kind!r}")


def output_kind(path: str | Path) -> str:
    """'tiff' or 'zarr' from the output's extension."""
    name = Path(path).name.lower()
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    raise DatasetError(f"{path}: expected an output name ending in .ome.tif, .ome.tiff, .tif, .tiff (OME-TIFF) "
                       f"or .zarr, .ome.zarr (OME-Zarr), got {Path(path).suffix or 'no extension'!r}")
