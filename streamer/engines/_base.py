"""The engine interface: a float32 NCHW batch of normalised frames in (C = 1, or K consecutive frames of a
K-frame model), (N, 1, H, W) out."""

from __future__ import annotations

import logging
import time
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
    are free); :meth:`infer` runs a batch of that shape. bf16/fp16 are kept only if, on a
    calibration batch, their output is within ``min_psnr_db`` of float32's; int8 (an INT8 export)
    was checked on held-out frames when it was written. See :meth:`prepare`.
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
        self._decided: str | None = None
        self.input_frames = 1
        """K: input channels of the model (its consecutive frames); set from the model card by create_engine."""

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
        """Compile for ``shape`` (N, K, H, W), choosing and checking the precision once.

        ``fp32`` compiles float32 only. ``bf16``/``fp16`` are kept only if, on a calibration batch,
        they stay within ``min_psnr_db`` of float32. ``int8`` runs the model's INT8 export, which
        passed its quality check on held-out frames when it was written (the model card says how
        much it lost). ``auto`` takes every reduced precision that passed its check and keeps the
        fastest at this shape (timed here, on this machine). The first shape decides; later shapes
        (another frame size, a batch of frames) compile at the same precision, so a frame gives the same
        output whatever else is running with it."""
        shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        if shape in self._compiled:
            self._current = shape
            return
        if self._decided is not None:  # chosen once per engine: every shape runs at the same precision
            self._compiled[shape] = self._compile(shape, self._decided)
            self._current = shape
            return
        want = self.requested_precision
        fp32 = self._compile(shape, "fp32")
        passed: dict[str, Any] = {}
        notes: list[str] = []
        reduced = self._reduced_precision() if want == "auto" else want if want in ("bf16", "fp16") else None
        if reduced is not None and reduced not in self._supported():
            notes.append(f"{reduced} not supported by {self.name} on {self.device}")
            reduced = None
        if reduced is not None:
            fast, note = self._checked(shape, reduced, fp32, calibration)
            notes.append(note)
            if fast is not None:
                passed[reduced] = fast
        if want in ("auto", "int8"):
            if "int8" in self._supported():
                try:
                    passed["int8"] = self._compile(shape, "int8")
                    notes.append(f"int8 {self._int8_note()}".strip())
                except Exception as exc:  # a backend refusing the INT8 graph is not fatal
                    notes.append(f"int8 failed on {self.name} ({type(exc).__name__}: {exc})")
            elif want == "int8" or self._int8_note():
                notes.append(f"int8 not available: {self._int8_note() or f'{self.name} has no INT8 path'}")
        if passed and not passed.keys() & {"bf16", "fp16"} and want == "auto":
            passed["fp32"] = fp32  # INT8 alone must still beat float32 here (thin networks may not)
        chosen, precision = fp32, "fp32"
        if len(passed) == 1:
            precision, chosen = next(iter(passed.items()))
        elif passed:
            x = np.ascontiguousarray(calibration if calibration is not None and calibration.shape == shape
                                     else calibration_batch(shape), dtype=np.float32)
            times: dict[str, float] = {}
            for p, c in passed.items():
                try:
                    times[p] = self._time(c, x)
                except Exception as exc:  # refused at run time: not a candidate
                    notes.append(f"{p} failed on {self.name} ({type(exc).__name__}: {exc})")
            if times:
                precision = min(times, key=times.__getitem__)
                chosen = passed[precision]
                notes.append("fastest here: " + ", ".join(f"{p} {t * 1e3:.1f} ms" for p, t in
                                                          sorted(times.items(), key=lambda kv: kv[1])))
        if precision == "fp32" and want != "fp32":
            notes.append("using fp32")
        self.precision_note = "; ".join(notes)
        if self.precision_note:
            (log.warning if precision == "fp32" and want not in ("auto", "fp32") else log.info)(
                "%s: %s", self.name, self.precision_note)
        self._compiled[shape] = chosen
        self.precision = self._decided = precision
        self._current = shape

    def _checked(self, shape: tuple[int, int, int, int], precision: str, fp32: Any,
                 calibration: np.ndarray | None) -> tuple[Any | None, str]:
        """Compile at a reduced float precision and compare it with float32 on a calibration batch."""
        try:
            fast = self._compile(shape, precision)
            x = calibration if calibration is not None and calibration.shape == shape else calibration_batch(shape)
            x = np.ascontiguousarray(x, dtype=np.float32)
            score = psnr_between(self._run(fast, x), self._run(fp32, x))
        except Exception as exc:  # a backend refusing the precision is not fatal
            return None, f"{precision} failed on {self.name} ({exc})"
        if score >= self.min_psnr_db:
            return fast, f"{precision} checked against fp32: {score:.1f} dB"
        return None, (f"{precision} rejected: {score:.1f} dB against fp32 on the calibration frame "
                      f"(needs >= {self.min_psnr_db:.0f} dB)")

    def _time(self, compiled: Any, x: np.ndarray, budget_s: float = 1.0) -> float:
        """Median seconds of one run (one warm-up, then up to 7 runs within ``budget_s``)."""
        self._run(compiled, x)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 7 and (len(times) < 2 or time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            self._run(compiled, x)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def _int8_note(self) -> str:
        """What the model's INT8 export is (or why there is none), for the precision note."""
        return ""

    @property
    def precision_decided(self) -> bool:
        """Whether the precision has been chosen (at the first shape prepared)."""
        return self._decided is not None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Denoise a normalised float32 (N, K, H, W) batch (K: the model's input frames, 1 for a single-frame
        model) into (N, 1, H, W); compiles first for a new shape."""
        if batch.ndim != 4 or batch.shape[1] != self.input_frames:
            raise ValueError(f"expected a float32 batch (N, {self.input_frames}, H, W), got shape {batch.shape}")
        shape = tuple(batch.shape)
        if shape != self._current:
            self.prepare(shape)  # type: ignore[arg-type]
        compiled = self._compiled[shape]
        if compiled is None:  # released for a frame path (see OpenVINOEngine.infer_frames): compile again
            compiled = self._compiled[shape] = self._compile(shape, self._decided or "fp32")  # type: ignore[arg-type]
        return self._run(compiled, np.ascontiguousarray(batch, dtype=np.float32))

    # --- optional: the whole frame conversion inside the engine --------------------------------
    #: dtypes of camera frames :meth:`infer_frames` takes (empty: the engine has no such path)
    frame_dtypes: tuple[str, ...] = ()

    def infer_frames(self, frames: np.ndarray, mean: float, std: float, out_dtype: str) -> np.ndarray:
        """Denoise a (N, K, H, W) batch of camera frames (a dtype in :attr:`frame_dtypes`) with the
        normalisation, and the conversion back to ``out_dtype`` (clipped to its range and rounded to
        nearest-even for integers), inside the engine: the result of doing them around :meth:`infer`,
        up to float32 rounding (integers: one count where a value falls on .5)."""
        raise NotImplementedError(f"{self.name} has no frame path")

    def info(self) -> dict[str, Any]:
        return {"engine": self.name, "device": self.device, "precision": self.precision,
                "precision_note": self.precision_note, "threads": self.num_threads,
                "shapes": [list(s) for s in self._compiled]}

    def forget(self, height: int, width: int) -> int:
        """Release what was compiled for images of ``height`` × ``width`` (every batch size); the precision
        stays decided. Returns how many compiled shapes went."""
        gone = [s for s in self._compiled if tuple(s[-2:]) == (height, width)]
        for shape in gone:
            del self._compiled[shape]
            if shape == self._current:
                self._current = None
        return len(gone)

    def close(self) -> None:
        self._compiled.clear()
        self._current = None
        self._decided = None
