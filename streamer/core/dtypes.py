"""Float intensities back to a camera's dtype: clipped to its range and rounded, never wrapped."""

from __future__ import annotations

import numpy as np

__all__ = ["to_dtype"]


def _float32_range(t: type) -> tuple[np.float32, np.float32]:
    """The integer type's range as float32 bounds that lie inside it: float32 rounds 2**31 - 1 and
    2**32 - 1 up to 2**31 and 2**32, which would overflow (wrap) in the cast back."""
    info = np.iinfo(t)
    lo, hi = np.float32(info.min), np.float32(info.max)
    if int(hi) > info.max:
        hi = np.nextafter(hi, np.float32(0))
    if int(lo) < info.min:
        lo = np.nextafter(lo, np.float32(0))
    return lo, hi


_INT_RANGE = {np.dtype(t): _float32_range(t) for t in (np.uint8, np.uint16, np.int16, np.uint32, np.int32)}


def to_dtype(y: np.ndarray, dtype: np.dtype | type, inplace: bool = False) -> np.ndarray:
    """Float intensities in ``dtype``: integer types are clipped to their range and rounded (never
    wrapped), float types are cast. ``inplace`` lets the clipping and rounding reuse ``y``."""
    dtype = np.dtype(dtype)
    if y.dtype == dtype:
        return y
    if dtype.kind not in "iu":
        return y.astype(dtype, copy=False)
    lo, hi = _INT_RANGE.get(dtype) or _float32_range(dtype.type)
    y = np.clip(y, lo, hi, out=y if inplace else None)
    np.rint(y, out=y)
    return y.astype(dtype)
