"""The engine interface: a float32 NCHW batch of normalised frames in, the same shape out."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["Engine", "EngineUnavailable", "psnr_between", "calibration_batch"]

log = logging.getLogger("n2n.streamer")


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (library missing, no GPU, no exported file)."""


def psnr_between(test: np.ndarray, ref: np.ndarray) -> float:
    """PSNR (dB) of ``test`` against ``ref``, with the reference's value range as peak."""
    ref = ref.astype(np.float64)
    mse = float(np.mean((test.astype(np.float64) - ref) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def calibration_batch(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A frame-like normalised batch (smooth structures plus noise) for precision checks,
    used when no real frame of the shape has arrived yet."""
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w), np.float32)
    for _ in range(12):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s = rng.uniform(2, max(3.0, min(h, w) / 8))
        img += rng.uniform(1, 4) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    batch = img[None, None] + rng.normal(0, 0.5, size=(n, c, h, w)).astype(np.float32)
    return ((batch - batch.mean()) / (batch.std() + 1e-6)).astype(np.float32)


class Engine(ABC):
    """Runs an exported model. Subclasses set ``name`` and implement ``_compile``/``_run``.

    :meth:`prepare` compiles for one input shape (once per shape; later calls with that shape
    are free); :meth:`infer` runs a batch of that shape. Reduced precision is kept only if,
    on a calibration batch, its output is within ``min_psnr_db`` of float32's.
    """

    name: str = "engine"

    def __init__(self, precision: str = "auto", device: str = "cpu", num_threads: int | None = None,
                 min_psnr_db: float = 50.0) -> None:
        self.requested_precision = precision
        self.device = device
        self.num_threads = num_threads
        self.min_psnr_db = min_psnr_db
        self.precision = "fp32"
        self.precision_note = ""
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._current: tuple[int, ...] | None = None

    # --- to implement -------------------------------------------------------------------
    @abstractmethod
    def _compile(self, shape: tuple[int, int, int, int], precision: str) -> Any:
        """An object that runs batches of ``shape`` at ``precision`` ('fp32', 'bf16', 'fp16')."""

    @abstractmethod
    def _run(self, compiled: Any, batch: np.ndarray) -> np.ndarray:
        """Run one batch; return float32 of the same shape (a new array or one the caller may keep)."""

    def _reduced_precision(self) -> str | None:
        """The reduced precision 'auto' tries on this device, or None for float32 only."""
        return None

    def _supported(self) -> tuple[str, ...]:
        return ("fp32",)

    # --- the interface --------------------------------------------------------------------
    def prepare(self, shape: tuple[int, int, int, int], calibration: np.ndarray | None = None) -> None:
        """Compile for ``shape`` (N, 1, H, W), choosing and checking the precision once."""
        shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        if shape in self._compiled:
            self._current = shape
            return
        want = self.requested_precision
        reduced = self._reduced_precision() if want == "auto" else (None if want == "fp32" else want)
        if reduced is not None and reduced not in self._supported():
            self.precision_note = f"{reduced} not supported by {self.name} on {self.device}; using fp32"
            log.warning("%s", self.precision_note)
            reduced = None
        fp32 = self._compile(shape, "fp32")
        chosen, precision = fp32, "fp32"
        if reduced is not None:
            try:
                fast = self._compile(shape, reduced)
                x = calibration if calibration is not None and calibration.shape == shape else calibration_batch(shape)
                x = np.ascontiguousarray(x, dtype=np.float32)
                score = psnr_between(self._run(fast, x), self._run(fp32, x))
            except Exception as exc:  # a backend refusing the precision is not fatal
                self.precision_note = f"{reduced} failed on {self.name} ({exc}); using fp32"
                log.warning("%s", self.precision_note)
            else:
                if score >= self.min_psnr_db:
                    chosen, precision = fast, reduced
                    self.precision_note = f"{reduced} checked against fp32: {score:.1f} dB"
                    log.info("%s: %s", self.name, self.precision_note)
                else:
                    self.precision_note = (f"{reduced} rejected: {score:.1f} dB against fp32 on the calibration "
                                           f"frame (needs >= {self.min_psnr_db:.0f} dB); using fp32")
                    log.warning("%s: %s", self.name, self.precision_note)
        self._compiled[shape] = chosen
        self.precision = precision
        self._current = shape

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Denoise a normalised float32 (N, 1, H, W) batch; compiles first for a new shape."""
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected a float32 batch (N, 1, H, W), got shape {batch.shape}")
        shape = tuple(batch.shape)
        if shape != self._current:
            self.prepare(shape)  # type: ignore[arg-type]
        return self._run(self._compiled[shape], np.ascontiguousarray(batch, dtype=np.float32))

    def info(self) -> dict[str, Any]:
        return {"engine": self.name, "device": self.device, "precision": self.precision,
                "precision_note": self.precision_note, "threads": self.num_threads,
                "shapes": [list(s) for s in self._compiled]}

    def close(self) -> None:
        self._compiled.clear()
        self._current = None
