"""The model card, as the trainer writes it: the typed definition lives in :mod:`streamer.core.card`
(the streamer reads it without importing the trainer); this module adds what only training knows."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from streamer.core.card import CARD_NAME, CARD_VERSION, Artifact, CardError, ModelCard, Quantization, file_digest

__all__ = ["CARD_NAME", "CARD_VERSION", "Artifact", "CardError", "ModelCard", "Quantization", "add_artifact",
           "file_digest", "read_card", "versions"]


def versions() -> dict[str, str]:
    """Versions of the packages that shaped a model."""
    out = {"python": platform.python_version()}
    for pkg in ("n2n-live", "torch", "numpy", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_card(run_dir: str | Path) -> ModelCard:
    """Read and check ``run_dir/model.json``."""
    return ModelCard.load(run_dir)


def add_artifact(run_dir: str | Path, artifact: Artifact) -> ModelCard:
    """Record an exported file in the run's model card (replacing one of the same format)."""
    card = ModelCard.load(run_dir)
    card.artifacts = {**card.artifacts, artifact.format: artifact}
    card.save()
    return card
