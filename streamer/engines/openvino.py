"""OpenVINO on the CPU: the fastest CPU engine (it uses bf16 on CPUs with bf16 units)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Engine, EngineUnavailable, log

__all__ = ["OpenVINOEngine", "import_openvino"]

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# integer ranges as float32 values inside them (as streamer.core.dtypes.to_dtype clips)
_INT_RANGE = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0), "int16": (-32768.0, 32767.0)}


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
    """Compiles ``model.onnx`` (and ``model_int8.xml``, the INT8 export, when the model has one) for
    each frame shape: static shapes run fastest."""

    name = "openvino"

    def __init__(self, onnx_path: str | Path, int8_path: str | Path | None = None, int8_note: str = "",
                 **kwargs: Any) -> None:
        try:
            ov = import_openvino()
        except ImportError as exc:
            raise EngineUnavailable(f"openvino is not installed ({exc}); pip install openvino") from None
        if kwargs.get("device", "cpu") not in ("cpu", "auto"):
            raise EngineUnavailable(f"the openvino engine runs on the CPU here, not {kwargs['device']!r}")
        kwargs["device"] = "cpu"
        super().__init__(**kwargs)
        self._core = ov.Core()
        self._version = str(getattr(ov, "__version__", "") or ov.get_version())
        self._models = {"float": self._core.read_model(str(onnx_path))}
        if int8_path is not None:
            self._models["int8"] = self._core.read_model(str(int8_path))
        self._int8_text = int8_note
        self._framed: dict[tuple[Any, ...], Any] = {}
        caps = set(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        self._caps = {p for p, cap in (("bf16", "BF16"), ("fp16", "FP16")) if cap in caps} | {"fp32"}
        if int8_path is not None:
            self._caps.add("int8")

    def _supported(self) -> tuple[str, ...]:
        return tuple(sorted(self._caps))

    def _reduced_precision(self) -> str | None:
        return "bf16" if "bf16" in self._caps else None

    def _library(self) -> str:
        return f"openvino {self._version}"

    def _int8_note(self) -> str:
        return self._int8_text

    def _config(self, hint: str) -> dict[str, Any]:
        """Compile options. A thread count below the cores this process may use unpins the threads: OpenVINO
        pins each to a core, the same first cores in every process, so two 1-thread processes (``n2n denoise
        --workers 2``, or two ``n2n serve --threads 1``) would share one core and run no faster than one."""
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if self.num_threads:
            config["INFERENCE_NUM_THREADS"] = self.num_threads
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            if self.num_threads < cores:
                config["ENABLE_CPU_PINNING"] = False
        return config

    def _compile(self, shape: tuple[int, int, int, int], precision: str) -> Any:
        model = self._models["int8" if precision == "int8" else "float"]
        model.reshape(list(shape))
        # the INT8 graph keeps float32 between its quantised layers: the export's check measured that
        hint = "f32" if precision == "int8" else _OV_PRECISION[precision]
        config = self._config(hint)
        compiled = self._core.compile_model(model, "CPU", config)
        return compiled.create_infer_request()

    def _run(self, compiled: Any, batch: np.ndarray) -> np.ndarray:
        compiled.infer({0: batch})
        return np.array(compiled.get_output_tensor(0).data, dtype=np.float32, copy=True)

    # the frame path: normalisation and conversion back to the camera's dtype as nodes of the graph, so the
    # server does no per-pixel work in Python (about 0.4 ms of a 7 ms frame at 512² for a real-time model)
    frame_dtypes = ("uint8", "uint16", "int16", "float32")

    frame_noise_models = True

    def infer_frames(self, frames: np.ndarray, mean: float, std: float, out_dtype: str,
                     noise: tuple[float, float, float] | None = None) -> np.ndarray:
        """See :meth:`Engine.infer_frames`. The graph does the Python path's float32 operations, which
        OpenVINO may fuse: an integer output can differ by one count where a value falls on .5."""
        shape = tuple(int(v) for v in frames.shape)
        if shape not in self._compiled:
            if self._decided is None:
                self.prepare(shape)  # type: ignore[arg-type]  # decides the precision, as for infer()
            else:
                self._compiled[shape] = None  # this shape needs no float-batch model (infer() makes one if asked)
        self._current = shape
        key = (shape, frames.dtype.name, out_dtype, float(mean), float(std), noise)
        entry = self._framed.get(key)
        if entry is None:
            try:
                entry = (self._compile_frames(shape, frames.dtype.name, out_dtype, mean, std, noise), False)
            except RuntimeError:
                # some graphs cannot take the camera's dtype at their input (OpenVINO's CPU plugin refuses
                # uint16 straight into an INT8 graph's first quantizer): cast to float32 here instead
                entry = (self._compile_frames(shape, "float32", out_dtype, mean, std, noise), True)
            self._framed[key] = entry
            # frames of this shape now take this path: let the float-batch model go (at 2048² the default
            # network's compiled activations are 1.6 GB); infer() compiles it again if it is ever needed
            self._compiled[shape] = None
        request, cast = entry
        request.infer({0: frames.astype(np.float32) if cast else frames})
        return np.array(request.get_output_tensor(0).data, copy=True)

    def _compile_frames(self, shape: tuple[int, ...], in_dtype: str, out_dtype: str, mean: float,
                        std: float, noise: tuple[float, float, float] | None = None) -> Any:
        ov = import_openvino()
        import openvino.opset13 as ops
        from openvino.preprocess import PrePostProcessor

        precision = self._decided or "fp32"
        model = self._models["int8" if precision == "int8" else "float"].clone()
        model.reshape(list(shape))
        types = {"uint8": ov.Type.u8, "uint16": ov.Type.u16, "int16": ov.Type.i16, "float32": ov.Type.f32}
        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(types[in_dtype])
        scale, offset = np.float32(1.0 / std), np.float32(-mean / std)

        def f32(v: float) -> Any:
            return ops.constant(np.float32(v))

        if noise is None:
            # x · (1/std) + (−mean/std): the float32 operations of Denoiser.preprocess
            ppp.input().preprocess().convert_element_type(ov.Type.f32).custom(
                lambda x: ops.add(ops.multiply(x, ops.constant(scale)), ops.constant(offset)).output(0))
        else:  # the generalised Anscombe transform of Normalization._stabilise, then / std
            a, o, r = (float(v) for v in noise)
            c = 0.375 * a * a + r * r
            ppp.input().preprocess().convert_element_type(ov.Type.f32).custom(
                lambda x: ops.multiply(ops.add(ops.multiply(ops.sqrt(ops.maximum(ops.add(
                    ops.multiply(x, f32(a)), f32(c - a * o)), f32(0.0))), f32(2.0 / a)),
                    f32(-2.0 / a * np.sqrt(c))), f32(1.0 / std)).output(0))

        def unstabilise(out: Any) -> Any:  # Normalization._unstabilise: the exact unbiased inverse, closed form
            a, o, r = (float(v) for v in noise)  # type: ignore[union-attr]
            c, s2, k = 0.375 * a * a + r * r, (r / a) ** 2, float(np.sqrt(1.5))
            z = ops.maximum(ops.add(ops.multiply(out, f32(std)), f32(2.0 / a * np.sqrt(c))), f32(0.8))
            inv = ops.divide(f32(1.0), z)
            inv2 = ops.multiply(inv, inv)
            e = ops.add(ops.multiply(ops.multiply(z, z), f32(0.25)), ops.multiply(inv, f32(0.25 * k)))
            e = ops.add(e, ops.multiply(inv2, f32(-1.375)))
            e = ops.add(e, ops.multiply(ops.multiply(inv2, inv), f32(0.625 * k)))
            e = ops.maximum(ops.add(e, f32(-(0.125 + s2))), f32(0.0))
            return ops.add(ops.multiply(e, f32(a)), f32(o))

        def back(out: Any) -> Any:
            if noise is None:
                y = ops.add(ops.multiply(out, ops.constant(np.float32(std))), ops.constant(np.float32(mean)))
            else:
                y = unstabilise(out)
            if out_dtype == "float32":
                return y.output(0)
            lo, hi = _INT_RANGE[out_dtype]
            y = ops.round(ops.clamp(y, float(lo), float(hi)), "half_to_even")
            return ops.convert(y, types[out_dtype]).output(0)

        ppp.output().postprocess().custom(back)
        hint = "f32" if precision == "int8" else _OV_PRECISION[precision]
        config = self._config(hint)
        return self._core.compile_model(ppp.build(), "CPU", config).create_infer_request()

    def release(self, shape: tuple[int, ...]) -> None:
        """See :meth:`Engine.release`: OpenVINO's ``CompiledModel.release_memory`` (2024.3 and later) frees the
        intermediate buffers, allocated again at the next inference."""
        request = self._compiled.get(tuple(int(v) for v in shape))
        compiled = getattr(request, "get_compiled_model", None)
        if compiled is None:
            return
        try:
            compiled().release_memory()
        except (AttributeError, RuntimeError) as exc:  # an older OpenVINO: the memory stays until forget()
            log.debug("openvino release_memory unavailable: %s", exc)

    def forget(self, height: int, width: int) -> int:
        for key in [k for k in self._framed if tuple(k[0][-2:]) == (height, width)]:
            del self._framed[key]
        return super().forget(height, width)

    def close(self) -> None:
        super().close()
        self._framed.clear()
