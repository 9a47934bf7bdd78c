"""PyTorch: a TorchScript export on the CPU or a CUDA GPU (fp16 on the GPU, checked).

A TorchScript file is a program, not data: it is loaded only if this install wrote it (its sha256 is in
:mod:`streamer.core.trust`'s list) or with ``trust_code`` (``--trust-code``). The file is read once, its digest
checked, and those very bytes loaded (no second read that could find another file)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..core import trust
from ._base import Engine, EngineUnavailable

__all__ = ["CodeNotTrusted", "TorchEngine", "check_trusted"]

MAX_TORCHSCRIPT_BYTES = 4 * 2**30
"""A TorchScript file larger than this is not read into memory (no U-Net comes near)."""


class CodeNotTrusted(EngineUnavailable):
    """A TorchScript file this install did not write, without ``trust_code``: refused before it is loaded (``auto``
    then takes the next engine; ``--engine torch`` says so in one line)."""


def check_trusted(digest: str | None, what: str, trust_code: bool) -> None:
    """Refuse the TorchScript file of this sha256 unless this install wrote it or ``trust_code``."""
    if not trust_code and not trust.is_trusted(digest):
        raise CodeNotTrusted(trust.refusal(what))


class TorchEngine(Engine):
    """Runs ``model.ts``; on CUDA in channels-last with fp16 when it matches fp32."""

    name = "torch"

    def __init__(self, torchscript_path: str | Path, trust_code: bool = False, **kwargs: Any) -> None:
        path = Path(torchscript_path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise FileNotFoundError(f"{path}: cannot read the TorchScript file ({exc.strerror})") from None
        if size > MAX_TORCHSCRIPT_BYTES:
            raise EngineUnavailable(f"{path}: {size / 2**30:.1f} GiB: larger than any TorchScript U-Net "
                                    f"({MAX_TORCHSCRIPT_BYTES // 2**30} GiB at most)")
        if not trust_code:  # refused before a byte of it is loaded as a module
            check_trusted(_digest_of_file(path), str(path), trust_code)
        try:
            import torch
        except ImportError as exc:
            raise EngineUnavailable(f"torch is not installed ({exc})") from None
        data = path.read_bytes()
        if not trust_code:  # the bytes loaded are the bytes checked
            check_trusted(hashlib.sha256(data).hexdigest(), str(path), trust_code)
        super().__init__(**kwargs)
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
        self._torch = torch
        if self.num_threads and self.device == "cpu":
            torch.set_num_threads(self.num_threads)
        self._module = torch.jit.load(io.BytesIO(data), map_location=self.device).eval()
        del data
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


def _digest_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
