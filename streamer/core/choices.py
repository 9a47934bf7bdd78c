"""The choices a user makes of engine, precision, device and output type, defined once: every config, the CLI's
help and errors, the napari widget and the benchmarks offer exactly these (CAREamics' ``config/support`` habit).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["DEVICES", "ENGINES", "ENGINE_CHOICES", "OUTPUT_DTYPES", "PRECISIONS", "PRECISION_CHOICES", "Device",
           "EngineChoice", "OutputDtype", "PrecisionChoice"]

EngineChoice = Literal["auto", "openvino", "onnxruntime", "torch"]
"""Inference engine. 'auto': PyTorch on a CUDA GPU, else OpenVINO, else ONNX Runtime (the TorchScript engine runs
on the CPU only when asked for: ``torch``)."""
ENGINE_CHOICES: tuple[str, ...] = get_args(EngineChoice)
ENGINES: tuple[str, ...] = ENGINE_CHOICES[1:]
"""The engines themselves (``auto`` picks among them)."""

PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16", "int8"]
"""'auto': the fastest precision here among those that passed their check."""
PRECISION_CHOICES: tuple[str, ...] = get_args(PrecisionChoice)
PRECISIONS: tuple[str, ...] = PRECISION_CHOICES[1:]
"""The precisions themselves (``auto`` picks among them)."""

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)

OutputDtype = Literal["same", "float32"]
"""'same': the input's dtype, clipped and rounded; 'float32': unrounded intensities."""
OUTPUT_DTYPES: tuple[str, ...] = get_args(OutputDtype)
