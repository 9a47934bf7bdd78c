"""The engine interface: a float32 NCHW batch of normalised frames in (C = 1, or K consecutive frames of a
K-frame model), (N, 1, H, W) out."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHOICE_NAME", "Engine", "EngineUnavailable", "calibration_batch", "cpu_name", "psnr_between"]

CHOICE_NAME = "precision_choice.json"
"""The file in a model folder where ``auto`` records the precision it timed and chose, per machine."""

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


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


class Engine(ABC):
    """Runs an exported model. Subclasses set ``name`` and implement ``_compile``/``_run``.

    :meth:`prepare` compiles for one input shape (once per shape; later calls with that shape
    are free); :meth:`infer` runs a batch of that shape. bf16/fp16 are kept only if, on a
    calibration batch, their output is within ``min_psnr_db`` of float32's; int8 (an INT8 export)
    was checked on held-out frames when it was written. See :meth:`prepare`.

    ``choice_file`` (the model folder's ``precision_choice.json``) is where ``auto`` records the precision it timed
    and chose, keyed by :meth:`fingerprint` (this machine, engine, library version and ``model_key``: the model's
    files); a later ``auto`` with the same fingerprint takes it again without timing, unless ``retime``.
    """

    name: str = "engine"

    def __init__(self, precision: str = "auto", device: str = "cpu", num_threads: int | None = None,
                 min_psnr_db: float = 50.0, choice_file: str | Path | None = None,
                 model_key: dict[str, str] | None = None, retime: bool = False) -> None:
        self.requested_precision = precision
        self.device = device
        self.num_threads = num_threads
        self.min_psnr_db = min_psnr_db
        self.choice_file = Path(choice_file) if choice_file is not None else None
        self.model_key = dict(model_key or {})
        self.retime = retime
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

    def _library(self) -> str:
        """The engine library and its version (``openvino 2024.4``): a new version may time differently."""
        return ""

    def _device_name(self) -> str:
        """What runs the engine: the CPU's model name, or the GPU's."""
        return cpu_name()

    # --- the recorded choice of auto ------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What a recorded ``auto`` choice holds for: this machine (its CPU or GPU), the engine, its device and
        library version, and the model's files (their sha256: a re-exported model is timed again)."""
        return {"machine": platform.machine(), "device_name": self._device_name(), "engine": self.name,
                "device": self.device, "library": self._library(), "model": dict(sorted(self.model_key.items()))}

    @staticmethod
    def _fingerprint_key(fingerprint: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]

    def _read_choices(self) -> dict[str, Any]:
        if self.choice_file is None:
            return {}
        try:
            data = json.loads(self.choice_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # unreadable or not JSON: as if none were recorded
            log.debug("precision choice %s not read: %s", self.choice_file, exc)
            return {}
        choices = data.get("choices") if isinstance(data, dict) else None
        return choices if isinstance(choices, dict) else {}

    def recorded_choice(self) -> dict[str, Any] | None:
        """The choice ``auto`` recorded for this fingerprint, or None."""
        fingerprint = self.fingerprint()
        entry = self._read_choices().get(self._fingerprint_key(fingerprint))
        if isinstance(entry, dict) and entry.get("fingerprint") == fingerprint and isinstance(
                entry.get("precision"), str):
            return entry
        return None

    def _record_choice(self, precision: str, times: dict[str, float], shape: tuple[int, ...]) -> None:
        """Record ``auto``'s choice in :attr:`choice_file`; a folder that cannot be written (read-only, a shared
        model) only means the next start times again: never an error."""
        if self.choice_file is None:
            return
        fingerprint = self.fingerprint()
        entry = {"fingerprint": fingerprint, "precision": precision,
                 "times_ms": {p: round(t * 1e3, 4) for p, t in sorted(times.items(), key=lambda kv: kv[1])},
                 "shape": list(shape), "threads": self.num_threads,
                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            choices = self._read_choices()
            choices[self._fingerprint_key(fingerprint)] = entry
            text = json.dumps({"version": 1, "choices": choices}, indent=2) + "\n"
            fd, tmp = tempfile.mkstemp(prefix=f".{CHOICE_NAME}.", dir=self.choice_file.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from the folder's other users
                os.replace(tmp, self.choice_file)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except Exception as exc:  # a read-only or shared model folder: carry on without a record
            log.debug("precision choice not recorded in %s: %s", self.choice_file, exc)

    # --- the interface --------------------------------------------------------------------
    def prepare(self, shape: tuple[int, int, int, int], calibration: np.ndarray | None = None) -> None:
        """Compile for ``shape`` (N, K, H, W), choosing and checking the precision once.

        ``fp32`` compiles float32 only. ``bf16``/``fp16`` are kept only if, on a calibration batch,
        they stay within ``min_psnr_db`` of float32. ``int8`` runs the model's INT8 export, which
        passed its quality check on held-out frames when it was written (the model card says how
        much it lost). ``auto`` takes every reduced precision that passed its check and keeps the
        fastest at this shape (timed here, on this machine), and records its choice (see :attr:`choice_file`): a
        later ``auto`` on this machine takes the recorded precision without timing if it passed its check again
        (``retime``: time again). The first shape decides; later shapes
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
            recorded = None if self.retime else self.recorded_choice()
            if recorded is not None and recorded["precision"] in passed:
                precision = recorded["precision"]
                chosen = passed[precision]
                when = str(recorded.get("date", "an earlier start"))[:10]
                notes.append(f"{precision} (chosen on {when} on this machine; --retime to time again)")
            else:
                if recorded is not None:
                    notes.append(f"recorded choice {recorded['precision']} did not pass its check: timing again")
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
                    if want == "auto":
                        self._record_choice(precision, times, shape)
        if precision == "fp32" and want != "fp32":
            notes.append("using fp32")
        self.precision_note = "; ".join(notes)
        if self.precision_note and precision != getattr(self, "_note_logged", None):
            # said once per engine and outcome: a frame shape compiled later to the same precision says its
            # note (its own timings) only in debug
            self._note_logged = precision
            (log.warning if precision == "fp32" and want not in ("auto", "fp32") else log.info)(
                "%s: %s", self.name, self.precision_note)
        elif self.precision_note:
            log.debug("%s (%s): %s", self.name, shape, self.precision_note)
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

    #: whether :meth:`infer_frames` takes a camera noise model (the ``anscombe`` normalisation) too
    frame_noise_models: bool = False

    def infer_frames(self, frames: np.ndarray, mean: float, std: float, out_dtype: str,
                     noise: tuple[float, float, float] | None = None) -> np.ndarray:
        """Denoise a (N, K, H, W) batch of camera frames (a dtype in :attr:`frame_dtypes`) with the
        normalisation, and the conversion back to ``out_dtype`` (clipped to its range and rounded to
        nearest-even for integers), inside the engine: the result of doing them around :meth:`infer`,
        up to float32 rounding (integers: one count where a value falls on .5). ``noise``: (gain, offset,
        read_noise) of the ``anscombe`` normalisation (:class:`streamer.core.card.Normalization`), whose scale is
        ``std`` (``mean`` 0); None: ``(x − mean) / std``."""
        raise NotImplementedError(f"{self.name} has no frame path")

    def info(self) -> dict[str, Any]:
        return {"engine": self.name, "device": self.device, "precision": self.precision,
                "precision_note": self.precision_note, "threads": self.num_threads,
                "shapes": [list(s) for s in self._compiled]}

    def release(self, shape: tuple[int, ...]) -> None:
        """Give back the working memory of the model compiled for ``shape`` (its activations) until its next run,
        which allocates it again: called after a large frame's tiles, so that one large frame does not keep its
        memory. The compiled model stays. Default: nothing to give back."""
        return None

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
