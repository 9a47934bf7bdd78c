"""FLOPs of one inference, counted from the exported ONNX graph (2 × the multiply-accumulates)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["model_flops"]

_COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _needed(node: Any) -> list[str]:
    """The tensors whose shapes give a node's multiply-accumulates."""
    if node.op_type == "Conv":
        return [node.output[0], node.input[1]]
    if node.op_type == "ConvTranspose":
        return [node.input[0], node.input[1]]
    return [node.input[0], node.output[0]]  # MatMul, Gemm: K from A, the rest from the output


def _macs(node: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    a, b = (shapes[n] for n in _needed(node))
    if node.op_type == "Conv":  # out (N, Cout, *spatial) × weight (Cout, Cin/g, *kernel)[1:]
        return math.prod(a) * math.prod(b[1:])
    if node.op_type == "ConvTranspose":  # in (N, Cin, *spatial) × weight (Cin, Cout/g, *kernel)[1:]
        return math.prod(a) * math.prod(b[1:])
    if node.op_type == "Gemm":
        trans_a = next((int(at.i) for at in node.attribute if at.name == "transA"), 0)
        return math.prod(b) * (a[0] if trans_a else a[-1])
    return math.prod(b) * a[-1]  # MatMul


def _static_shape(value_info: Any) -> tuple[int, ...] | None:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _shapes_by_running(model: Any, names: list[str], feed_name: str, feed_shape: tuple[int, ...],
                       types: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes that shape inference left symbolic (e.g. after a Pad computed from the input's
    shape), read from one ONNX Runtime run on zeros with those tensors made graph outputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in names:
        vi = onnx.ValueInfoProto()
        vi.name = name
        if name in types:
            vi.type.tensor_type.elem_type = types[name]
        probe.graph.output.append(vi)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(names, {feed_name: np.zeros(feed_shape, np.float32)})
    return {n: tuple(int(s) for s in np.shape(v)) for n, v in zip(names, outs)}


def model_flops(onnx_path: str | Path, height: int, width: int) -> float:
    """Floating-point operations of one (1, 1, height, width) inference: 2 × the multiply-accumulates
    of every Conv, ConvTranspose, MatMul and Gemm (biases, activations, pooling not counted).

    Shapes come from ``onnx.shape_inference`` at that static input shape; those it cannot resolve
    (a graph that pads by an amount computed from the input's shape) from one ONNX Runtime run."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    feeds = [i for i in graph.input if i.name not in inits]
    if len(feeds) != 1:
        raise ValueError(f"{onnx_path}: expected one image input, got {len(feeds)}")
    dims = feeds[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"{onnx_path}: expected a 4-d (N, C, H, W) input, got {len(dims)} dimensions")
    channels = int(dims[1].dim_value) if dims[1].HasField("dim_value") else 1
    feed_shape = (1, channels, int(height), int(width))
    for d, v in zip(dims, feed_shape):
        d.ClearField("dim_param")
        d.dim_value = v
    del graph.value_info[:]  # exporters store symbolic shapes; infer them again at this input shape
    for out in graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = dict(inits)
    types: dict[str, Any] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
        s = _static_shape(vi)
        if s is not None:
            shapes.setdefault(vi.name, s)
    for node in graph.node:  # Constant weights
        if node.op_type == "Constant":
            for at in node.attribute:
                if at.name == "value":
                    shapes.setdefault(node.output[0], tuple(int(d) for d in at.t.dims))
    nodes = [n for n in graph.node if n.op_type in _COUNTED]
    missing = sorted({name for n in nodes for name in _needed(n) if name not in shapes})
    if missing:
        shapes.update(_shapes_by_running(model, missing, feeds[0].name, feed_shape, types))
    return float(sum(2 * _macs(n, shapes) for n in nodes))
