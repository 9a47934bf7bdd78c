"""What a machine offers the GPU work (issue 25's first device call): Python, PyTorch and its CUDA, the GPUs, and
whether ``tensorrt``, ``torch_tensorrt``, ``triton``, ``onnxruntime`` (with its execution providers) and
``openvino`` (with its devices) import. One JSON object on stdout; nothing is installed or downloaded::

    python -m bench.probe [--json F]
"""

from __future__ import annotations

import importlib
import platform
import sys
from pathlib import Path
from typing import Any

from bench import command
from bench.command import write_json

__all__ = ["MODULES", "main", "probe"]

MODULES = ("tensorrt", "torch_tensorrt", "triton", "onnxruntime", "openvino")


def _module(name: str) -> dict[str, Any]:
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # a broken install says how it is broken
        return {"imports": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    info: dict[str, Any] = {"imports": True, "version": str(getattr(mod, "__version__", "unknown"))}
    if name == "onnxruntime":
        info["providers"] = list(mod.get_available_providers())
    if name == "openvino":
        info["devices"] = list(mod.Core().available_devices)
    return info


def probe() -> dict[str, Any]:
    """The machine's answer (see the module docstring)."""
    report: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch
    except ImportError as exc:
        report["torch"] = {"imports": False, "error": str(exc)}
    else:
        cuda = torch.cuda.is_available()
        report["torch"] = {
            "imports": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "gpus": [{"name": torch.cuda.get_device_name(i),
                      "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                      "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                     for i in range(torch.cuda.device_count())] if cuda else []}
    report["modules"] = {name: _module(name) for name in MODULES}
    return report


def main(argv: list[str] | None = None) -> int:
    ap = command.parser("bench.probe", __doc__)
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    import json

    report = probe()
    print(json.dumps(report, indent=1))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
