"""The widget's model set, without Qt: what its Model field names (a model folder, a set of one; or a
``models.yaml``, a model per channel: :class:`~streamer.core.modelset.ModelSet`'s rule) and how it shows which
channel goes to which model."""

from __future__ import annotations

from pathlib import Path

from streamer.core.card import CARD_NAME
from streamer.core.modelset import ModelSet, ModelSetError

__all__ = ["describe_routes", "model_set"]


def model_set(text: str) -> ModelSet:
    """The model set the widget's Model field names: a model folder (a set of one) or a ``models.yaml``; each model
    of it checked to be there (``ModelSetError`` says what is wrong, in one line)."""
    text = text.strip()
    if not text:
        raise ModelSetError("expected a model folder with model.json (made by n2n train) or a models.yaml, got "
                            "nothing")
    models = ModelSet.parse(text)
    for model in models.models:
        path = Path(model)
        if not path.exists() or (path.is_dir() and not (path / CARD_NAME).is_file()):
            raise ModelSetError(f"expected a model folder with model.json (made by n2n train), got {model!r}")
    return models


def describe_routes(models: ModelSet) -> str:
    """Which channel goes to which model, one line each, models by their folder's name."""
    if models.single:
        return f"every channel → {Path(str(models.default)).name}"
    lines = [f"{channel} → {Path(model).name}" for channel, model in models.channels.items()]
    other = Path(models.default).name if models.default else "raw (no model)"
    return "\n".join([*lines, f"any other channel → {other}"])
