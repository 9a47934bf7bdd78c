"""ONNX Runtime: the portable engine (all graph optimisations on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._base import Engine, EngineUnavailable

__all__ = ["OnnxRuntimeEngine"]


class OnnxRuntimeEngine(Engine):
    """One session with dynamic height and width; ``prepare`` warms it up for a shape."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, **kwargs: Any) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineUnavailable(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from None
        super().__init__(**kwargs)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.num_threads:
            opts.intra_op_num_threads = self.num_threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if self.device in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif self.device == "cuda":
            raise EngineUnavailable("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
        self._session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self._input = self._session.get_inputs()[0].name
        self._version = str(ort.__version__)

    def _library(self) -> str:
        return f"onnxruntime {self._version}"

    def _compile(self, shape: tuple[int, int, int, int], precision: str) -> Any:
        self._session.run(None, {self._input: np.zeros(shape, np.float32)})  # warm-up for this shape
        return self._session

    def _run(self, compiled: Any, batch: np.ndarray) -> np.ndarray:
        return compiled.run(None, {self._input: batch})[0]
