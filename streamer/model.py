"""What the streamer knows of a model: its card (``model.json``) and exported files.

The streamer never imports the trainer; a run folder made by ``n2n train`` holds everything
it needs: ``model.json`` (normalisation, size multiple, tile size), ``model.onnx`` (OpenVINO,
ONNX Runtime) and ``model.ts`` (PyTorch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CARD_NAME", "CARD_VERSION", "ModelCard", "unet_reach"]

CARD_NAME = "model.json"
CARD_VERSION = 1


def unet_reach(depth: int) -> int:
    """Pixels from a tile border beyond which a depth-``depth`` U-Net's output no longer
    depends on what lies past that border (its receptive-field radius, rounded up).

    Per level two 3×3 convolutions on the way down and up, one pooling and one upsampling:
    ``8·2**depth − 6`` pixels; ``2**(depth + 3)`` bounds it."""
    return 2 ** (depth + 3)


@dataclass(frozen=True)
class ModelCard:
    """The parts of ``model.json`` the streamer uses, plus the file it came from."""

    run_dir: Path
    name: str
    mean: float
    std: float
    size_multiple: int
    depth: int
    tile_size: int
    tile_overlap: int
    input_dtype: str | None
    artifacts: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path) -> ModelCard:
        """Read and check ``run_dir/model.json``; errors say what was expected and what was found."""
        run_dir = Path(run_dir)
        path = run_dir / CARD_NAME
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such model folder (make one with `n2n train`)")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no model card; is {run_dir} a folder made by `n2n train`?")
        try:
            card = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(card, dict) or card.get("card_version") != CARD_VERSION:
            got = card.get("card_version") if isinstance(card, dict) else type(card).__name__
            raise ValueError(f"{path}: expected card_version {CARD_VERSION}, got {got!r}")
        try:
            norm = card["normalization"]
            if norm.get("kind", "meanstd") != "meanstd":
                raise ValueError(f"expected normalisation kind 'meanstd', got {norm.get('kind')!r}")
            mean, std = float(norm["mean"]), float(norm["std"])
            depth = int(card["architecture"]["depth"])
            multiple = int(card.get("size_multiple", 2**depth))
            tile = card.get("tile", {})
            reach = unet_reach(depth)
            tile_size = int(tile.get("size", 2048))
            overlap = int(tile.get("overlap", reach))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed model card ({type(exc).__name__}: {exc})") from None
        if not std > 0:
            raise ValueError(f"{path}: normalisation std must be positive, got {std}")
        return cls(run_dir=run_dir, name=str(card.get("name", run_dir.name)), mean=mean, std=std,
                   size_multiple=multiple, depth=depth, tile_size=tile_size, tile_overlap=overlap,
                   input_dtype=card.get("input", {}).get("dtype"), artifacts=dict(card.get("artifacts", {})),
                   raw=card)

    def artifact(self, fmt: str, default_name: str) -> Path:
        """Path of an exported file (``onnx``, ``torchscript``), checked to exist."""
        name = self.artifacts.get(fmt, {}).get("path", default_name)
        path = self.run_dir / name
        if not path.exists():
            hint = f"n2n export --model {self.run_dir} --format {fmt}"
            raise FileNotFoundError(f"{path}: no {fmt} export in this model folder; make it with `{hint}`")
        return path
