"""bench.probe: what a machine offers the GPU work, as one JSON object (the first call on a lent GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from bench.probe import MODULES

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_probe_reports_this_machine(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "-m", "bench.probe", "--json", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_available"] == torch.cuda.is_available()
    assert len(report["torch"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert set(report["modules"]) == set(MODULES)
    for name, info in report["modules"].items():  # each says whether it imports, and why not where it does not
        assert isinstance(info["imports"], bool) and (info["imports"] or info["error"]), name
    assert "CPUExecutionProvider" in report["modules"]["onnxruntime"]["providers"]  # installed with the package
    assert "CPU" in report["modules"]["openvino"]["devices"]
