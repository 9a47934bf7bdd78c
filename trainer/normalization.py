"""Fixed intensity normalisation, computed on the training data and saved in the model card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Normalization"]


@dataclass(frozen=True)
class Normalization:
    """``(x - mean) / std`` on the way in, the inverse on the way out."""

    mean: float
    std: float
    kind: str = "meanstd"

    def __post_init__(self) -> None:
        if not np.isfinite(self.mean) or not np.isfinite(self.std) or self.std <= 0:
            raise ValueError(
                f"Expected a finite mean and a positive std, got mean={self.mean}, std={self.std}"
            )

    @classmethod
    def fit(cls, stacks: Sequence[np.ndarray]) -> Normalization:
        """Mean and standard deviation over all pixels of all stacks (float64 accumulation)."""
        if not stacks:
            raise ValueError("Expected at least one stack to compute normalisation from, got none")
        for i, s in enumerate(stacks):
            if s.dtype.kind == "f" and not np.isfinite(s).all():
                raise ValueError(f"Stack {i} contains NaN or infinite values; cannot normalise")
        n = sum(s.size for s in stacks)
        mean = sum(float(s.sum(dtype=np.float64)) for s in stacks) / n
        # frame by frame: no float64 copy of a whole (possibly multi-GB) stack
        var = sum(float(((frame.astype(np.float64) - mean) ** 2).sum()) for s in stacks for frame in s) / n
        std = float(np.sqrt(var))
        if std == 0:
            raise ValueError("Training data is constant (std 0): nothing to learn from")
        return cls(mean=mean, std=std)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std))

    def denormalize(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float32) * np.float32(self.std) + np.float32(self.mean)

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        if d.get("kind", "meanstd") != "meanstd":
            raise ValueError(f"Expected normalisation kind 'meanstd', got {d.get('kind')!r}")
        return cls(mean=float(d["mean"]), std=float(d["std"]))
