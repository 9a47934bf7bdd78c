"""The model card: a small JSON file beside every exported model (``model.json``).

It is all the streamer needs to run a model without importing the trainer: architecture,
normalisation, the frame-size multiple, where the data came from, metrics and versions.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["CARD_VERSION", "CARD_NAME", "read_card", "write_card", "versions", "file_digest"]

CARD_VERSION = 1
CARD_NAME = "model.json"


def versions() -> dict[str, str]:
    """Versions of the packages that shaped a model."""
    out = {"python": platform.python_version()}
    for pkg in ("n2n-live", "torch", "numpy", "onnx", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_card(run_dir: str | Path, card: dict[str, Any]) -> Path:
    """Write ``model.json`` atomically (a reader never sees half a card)."""
    path = Path(run_dir) / CARD_NAME
    card = {"card_version": CARD_VERSION, **card}
    card.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def read_card(run_dir: str | Path) -> dict[str, Any]:
    """Read and check ``model.json`` of a run folder."""
    path = Path(run_dir) / CARD_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model card; is {run_dir} a folder made by `n2n train`?")
    card = json.loads(path.read_text())
    if card.get("card_version") != CARD_VERSION:
        raise ValueError(
            f"{path}: expected card_version {CARD_VERSION}, got {card.get('card_version')!r}"
        )
    return card
