"""PyTorch: a TorchScript export on the CPU or a CUDA GPU (fp16 on the GPU, checked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._base import Engine, EngineUnavailable

__all__ = ["TorchEngine"]


class TorchEngine(Engine):
    """Runs ``model.ts``; on CUDA in channels-last with fp16 when it matches fp32."""

    name = "torch"

    def __init__(self, torchscript_path: str | Path, **kwargs: Any) -> None:
        try:
            import torch
        except ImportError as exc:
            raise EngineUnavailable(f"torch is not installed ({exc})") from None
        super().__init__(**kwargs)
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
        self._torch = torch
        if self.num_threads and self.device == "cpu":
            torch.set_num_threads(self.num_threads)
        self._module = torch.jit.load(str(torchscript_path), map_location=self.device).eval()
        if self.device == "cuda":
            self._module = self._module.to(memory_format=torch.channels_last)

    def _supported(self) -> tuple[str, ...]:
        return ("fp32", "fp16", "bf16") if self.device == "cuda" else ("fp32", "bf16")

    def _reduced_precision(self) -> str | None:
        return "fp16" if self.device == "cuda" else None

    def _library(self) -> str:
        return f"torch {self._torch.__version__}"

    def _device_name(self) -> str:
        if self.device == "cuda":
            return str(self._torch.cuda.get_device_name())
        return super()._device_name()

    def _compile(self, shape: tuple[int, int, int, int], precision: str) -> Any:
        dtype = {"fp32": None, "fp16": self._torch.float16, "bf16": self._torch.bfloat16}[precision]
        self._run(dtype, np.zeros(shape, np.float32))  # warm-up (and TorchScript profiling) for this shape
        return dtype

    def _run(self, compiled: Any, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.device == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if compiled is None:
                y = self._module(x)
            else:
                with torch.autocast(device_type=self.device, dtype=compiled):
                    y = self._module(x)
            return y.float().contiguous().cpu().numpy()
