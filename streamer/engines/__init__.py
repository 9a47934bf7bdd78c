"""Inference engines behind one interface, and the one place that picks among them.

``auto`` order: PyTorch on CUDA when a GPU is present, else OpenVINO on the CPU, else ONNX Runtime. On the CPU the
TorchScript engine runs only when asked for (``torch``). A TorchScript file is a program: the TorchScript engine
runs one only if this install wrote it (:mod:`streamer.core.trust`) or with ``trust_code`` (``--trust-code``);
otherwise ``auto`` skips it (logged) and ``torch`` refuses in one line. A zoo package's TorchScript is unpacked only
then (:func:`streamer.core.zoo.unpack_torchscript`).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from ..core import zoo
from ..core.card import CardError, ModelCard
from ..core.choices import ENGINES
from ._base import CHOICE_NAME, Engine, EngineUnavailable, calibration_batch, cpu_name, psnr_between
from .torch import CodeNotTrusted, check_trusted

__all__ = ["CHOICE_NAME", "ENGINES", "CodeNotTrusted", "Engine", "EngineUnavailable", "available_engines",
           "calibration_batch", "cpu_name", "create_engine", "model_key", "psnr_between"]

log = logging.getLogger("n2n.streamer")


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def available_engines() -> list[str]:
    """Engines whose library is importable here (whether a model has their file is separate)."""
    found = {"openvino": "openvino", "onnxruntime": "onnxruntime", "torch": "torch"}
    return [name for name in ENGINES if importlib.util.find_spec(found[name]) is not None]


def model_key(card: ModelCard) -> dict[str, str]:
    """The model's exported files by their sha256 (an OpenVINO export's weights too): part of the fingerprint a
    recorded precision choice holds for, so a re-exported model is timed again."""
    key: dict[str, str] = {}
    for fmt, art in card.artifacts.items():
        key[fmt] = art.sha256
        if art.weights_sha256:
            key[f"{fmt}.weights"] = art.weights_sha256
    return key


def _choice_file(card: ModelCard) -> Path | None:
    try:
        return card.run_dir / CHOICE_NAME
    except CardError:  # a card not loaded from a folder: nowhere to record
        return None


def _torchscript(card: ModelCard, trust_code: bool) -> Path:
    """The model's TorchScript file, once it is known to be one this install wrote, or ``trust_code``: refused
    before it is read (and, for a zoo package, before it is unpacked)."""
    art = card.artifacts.get("torchscript")
    package = zoo.package_of(card)
    if package is not None:
        if art is None:
            raise EngineUnavailable(f"{package}: the package has no TorchScript weights (the onnx engines run it)")
        check_trusted(art.sha256, f"{package}: its TorchScript weights ({art.path})", trust_code)
        return zoo.unpack_torchscript(card)
    if art is not None:
        check_trusted(art.sha256, str(card.run_dir / art.path), trust_code)
    return card.artifact("torchscript")


def _onnx(card: ModelCard) -> Path:
    """The model's ONNX file; a zoo package with TorchScript weights only says what it can do."""
    package = zoo.package_of(card)
    if package is not None and "onnx" not in card.artifacts:
        raise EngineUnavailable(zoo.torchscript_only(package))
    return card.artifact("onnx")


def _make(name: str, card: ModelCard, **kwargs: Any) -> Engine:
    engine = _construct(name, card, **kwargs)
    engine.input_frames = card.input_frames
    return engine


def _construct(name: str, card: ModelCard, trust_code: bool = False, **kwargs: Any) -> Engine:
    if name == "openvino":
        from .openvino import OpenVINOEngine

        q = card.quantization
        int8, note = None, q.reason if q else "this model has no INT8 export (n2n export --format int8)"
        if "openvino_int8" in card.artifacts and kwargs.get("precision") in ("auto", "int8"):
            try:
                int8 = card.artifact("openvino_int8")
                note = f"(export checked on held-out frames: {q.reason})" if q else "(export checked)"
            except (FileNotFoundError, ValueError) as exc:  # missing, or not the file the card recorded
                if kwargs.get("precision") == "int8":
                    raise
                note = f"not used: {exc}"
                log.warning("INT8 export of %s %s", card.name, note)
        return OpenVINOEngine(_onnx(card), int8_path=int8, int8_note=note, **kwargs)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(_onnx(card), **kwargs)
    if name == "torch":
        from .torch import TorchEngine

        return TorchEngine(_torchscript(card, trust_code), trust_code=trust_code, **kwargs)
    raise ValueError(f"expected an engine in auto, {', '.join(ENGINES)}; got {name!r}")


def create_engine(name: str, card: ModelCard, precision: str = "auto", device: str = "auto",
                  num_threads: int | None = None, min_psnr_db: float = 50.0, retime: bool = False,
                  trust_code: bool = False) -> Engine:
    """The engine ``name`` for the model ``card``; ``auto`` takes the first that works here: PyTorch on a CUDA
    GPU, else OpenVINO, then ONNX Runtime on the CPU. On the CPU the TorchScript engine runs only when asked for
    (``torch``): a TorchScript file is a program, the others are graphs. On any device it runs only a TorchScript
    file this install wrote, unless ``trust_code`` (else ``auto`` takes the next engine, ``torch`` refuses).

    Precision ``auto`` records the precision it timed and chose in the model folder (``precision_choice.json``,
    per machine, engine, library version and model files) and takes it again on a later start without timing;
    ``retime``: time again (and record the new choice)."""
    kwargs = {"precision": precision, "num_threads": num_threads, "min_psnr_db": min_psnr_db,
              "choice_file": _choice_file(card), "model_key": model_key(card), "retime": retime,
              "trust_code": trust_code}
    if name != "auto":
        dev = device
        if name in ("openvino",) and device == "auto":
            dev = "cpu"
        return _make(name, card, device=dev, **kwargs)
    order: list[tuple[str, str]] = []
    if device in ("auto", "cuda") and _cuda_available():
        order.append(("torch", "cuda"))
    if device == "cuda" and not order:
        raise EngineUnavailable("device 'cuda' was asked for, but no CUDA GPU is visible to PyTorch")
    if device != "cuda":
        order += [("openvino", "cpu"), ("onnxruntime", "cpu")]
    package = zoo.package_of(card)
    if package is not None and "onnx" not in card.artifacts:  # only the TorchScript engine could run it
        order = [(e, d) for e, d in order if e == "torch"]
    reasons = []
    for engine, dev in order:
        try:
            return _make(engine, card, device=dev, **kwargs)
        except CodeNotTrusted as exc:  # said where it is seen: the next engine serves, from the graph
            reasons.append(f"{engine} ({dev}): {exc}")
            log.warning("engine %s on %s skipped: %s", engine, dev, exc)
        except (EngineUnavailable, FileNotFoundError, ImportError) as exc:
            reasons.append(f"{engine} ({dev}): {exc}")
            log.info("engine %s on %s not usable: %s", engine, dev, exc)
    if package is not None and "onnx" not in card.artifacts:  # one line that says what would run it
        raise EngineUnavailable(zoo.torchscript_only(package))
    raise EngineUnavailable("no engine could run this model:\n  " + "\n  ".join(reasons))
