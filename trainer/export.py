"""Export a trained U-Net to ONNX or TorchScript, refusing exports that disagree with PyTorch."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from streamer.core import trust
from streamer.core.card import ONNX_NAME, TORCHSCRIPT_NAME

from .card import Artifact, file_digest
from .unet import UNet

__all__ = ["ExportError", "export_onnx", "export_torchscript", "ONNX_NAME", "TORCHSCRIPT_NAME", "relative_error"]

log = logging.getLogger("n2n.trainer")


class ExportError(RuntimeError):
    """An export failed or its output disagrees with the PyTorch model."""


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖₂ / ‖ref‖₂."""
    scale = max(float(np.linalg.norm(ref.astype(np.float64))), 1e-30)
    return float(np.linalg.norm(out.astype(np.float64) - ref)) / scale


def _check_frame(net: UNet, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random normalised frame of an odd, non-square size (proves dynamic H/W and padding)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, net.input_frames, size + 3, size + net.size_multiple + 1, generator=g)
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    return x.numpy(), ref


def _accept(tmp: Path, path: Path, what: str, err: float, limit: float) -> None:
    """Move a checked export into place, or delete it and refuse (an older file stays)."""
    if not err <= limit:
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f"{what} export refused: relative error {err:.3g} against PyTorch on a random frame "
            f"exceeds {limit:.3g}; {path.name} was not written"
        )
    tmp.replace(path)


def export_onnx(net: UNet, path: str | Path, opset: int = 18, check_size: int = 256,
                max_rel_error: float = 1e-4) -> Artifact:
    """Write ``net`` as ONNX with dynamic batch, height and width; check it with ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    net = net.cpu().eval().float()
    example = torch.randn(1, net.input_frames, 4 * net.size_multiple, 4 * net.size_multiple)
    dims = {0: torch.export.Dim("batch", min=1, max=1024),
            2: torch.export.Dim("height", min=net.size_multiple, max=16384),
            3: torch.export.Dim("width", min=net.size_multiple, max=16384)}
    tmp = path.with_name(path.name + ".tmp")
    try:
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net, (example,), dynamo=True, opset_version=opset,
                                        input_names=["input"], output_names=["output"],
                                        dynamic_shapes={"x": dims}, verbose=False)
            if program is None:
                raise ExportError("torch.onnx.export returned no program")
            program.save(str(tmp))
        onnx.checker.check_model(str(tmp))
        proto = onnx.load(str(tmp), load_external_data=False)
        written = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export failed: {exc}") from exc
    finally:
        quiet.setLevel(level)
    if written != {opset}:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export asked for opset {opset} but PyTorch wrote opset {sorted(written)}; "
                          "use an opset the exporter supports (18 or newer)")
    x, ref = _check_frame(net, check_size)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    err = relative_error(out, ref) if out.shape == ref.shape else float("inf")
    _accept(tmp, path, "ONNX", err, max_rel_error)
    log.info("wrote %s (opset %d, parity %.2g)", path, opset, err)
    return Artifact(path=path.name, format="onnx", opset=opset, input="input", output="output",
                    parity_rel_error=err, sha256=file_digest(path), **_layout(net))


def export_torchscript(net: UNet, path: str | Path, check_size: int = 256,
                       max_rel_error: float = 1e-4) -> Artifact:
    """Write ``net`` as a scripted TorchScript module; check it against the eager model. Its sha256 is recorded as
    written by this install (:mod:`streamer.core.trust`): the TorchScript engine runs it without ``--trust-code``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    net = net.cpu().eval().float()
    try:
        scripted = torch.jit.script(net)
        scripted.save(str(tmp))
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"TorchScript export failed: {exc}") from exc
    x, ref = _check_frame(net, check_size)
    with torch.no_grad():
        out = torch.jit.load(str(tmp))(torch.from_numpy(x)).numpy()
    err = relative_error(out, ref)
    _accept(tmp, path, "TorchScript", err, max_rel_error)
    digest = file_digest(path)
    trust.register(digest, path.resolve())
    log.info("wrote %s (parity %.2g)", path, err)
    return Artifact(path=path.name, format="torchscript", parity_rel_error=err, sha256=digest, **_layout(net))


def _layout(net: UNet) -> dict[str, str]:
    """The input layout of a K-frame network (a single-frame one keeps the card's default)."""
    k = net.input_frames
    return {} if k == 1 else {"layout": f"N{k}HW float32, normalised: {k} consecutive frames, oldest first; out N1HW"}
