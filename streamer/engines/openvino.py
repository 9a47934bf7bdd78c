"""OpenVINO on the CPU: the fastest CPU engine (it uses bf16 on CPUs with bf16 units)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._base import Engine, EngineUnavailable

__all__ = ["OpenVINOEngine"]

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVINOEngine(Engine):
    """Compiles ``model.onnx`` for each frame shape (static shapes run fastest)."""

    name = "openvino"

    def __init__(self, onnx_path: str | Path, **kwargs: Any) -> None:
        try:
            import openvino as ov
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
