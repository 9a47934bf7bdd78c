"""OpenVINO on the CPU: the fastest CPU engine (it uses bf16 on CPUs with bf16 units)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._base import Engine, EngineUnavailable

__all__ = ["OpenVINOEngine", "import_openvino"]

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def import_openvino() -> Any:
    """``import openvino`` without its usage telemetry.

    Importing openvino sends a usage event to Google Analytics from a background thread unless
    the user opted out with ``opt_in_out --opt_out``. A microscope PC is often offline and a lab
    tool should not phone home: when ``openvino_telemetry`` is not yet loaded it is hidden during
    the import, so openvino falls back to its own no-op telemetry stub. Set
    ``N2N_OPENVINO_TELEMETRY=1`` to leave openvino's default alone."""
    import os
    import sys

    if "openvino" not in sys.modules and os.environ.get("N2N_OPENVINO_TELEMETRY") != "1":
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


class OpenVINOEngine(Engine):
    """Compiles ``model.onnx`` for each frame shape (static shapes run fastest)."""

    name = "openvino"

    def __init__(self, onnx_path: str | Path, **kwargs: Any) -> None:
        try:
            ov = import_openvino()
        except ImportError as exc:
            raise EngineUnavailable(f"openvino is not installed ({exc}); pip install openvino") from None
        if kwargs.get("device", "cpu") not in ("cpu", "auto"):
            raise EngineUnavailable(f"the openvino engine runs on the CPU here, not {kwargs['device']!r}")
        kwargs["device"] = "cpu"
        super().__init__(**kwargs)
        self._core = ov.Core()
        self._model = self._core.read_model(str(onnx_path))
        caps = set(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        self._caps = {p for p, cap in (("bf16", "BF16"), ("fp16", "FP16")) if cap in caps} | {"fp32"}

    def _supported(self) -> tuple[str, ...]:
        return tuple(sorted(self._caps))

    def _reduced_precision(self) -> str | None:
        return "bf16" if "bf16" in self._caps else None

    def _compile(self, shape: tuple[int, int, int, int], precision: str) -> Any:
        self._model.reshape(list(shape))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
                                  "PERFORMANCE_HINT": "LATENCY"}
        if self.num_threads:
            config["INFERENCE_NUM_THREADS"] = self.num_threads
        compiled = self._core.compile_model(self._model, "CPU", config)
        return compiled.create_infer_request()

    def _run(self, compiled: Any, batch: np.ndarray) -> np.ndarray:
        compiled.infer({0: batch})
        return np.array(compiled.get_output_tensor(0).data, dtype=np.float32, copy=True)
