"""A recorded dataset's channels as a model set routes them: each channel's name, and the model of a set that serves
it. One rule for ``n2n denoise`` (every format) and ``n2n evaluate`` (TIFF stacks).

A channel goes by its name in the file (OME channel names, NDTiff's channel names), else by its index as text
(``"0"``, ``"1"``). A model set (:class:`streamer.core.modelset.ModelSet`) names channels by either: each name it
gives is found among the dataset's channels by :func:`streamer.core.streams.channel_index` (a name, else an index),
the channel's own model wins over the set's default, and a channel with neither gets None: it is written (or
scored) raw, never by another channel's model.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.modelset import ModelSet
from ..core.streams import channel_index
from ..core.streams import channel_labels as labels_of
from .base import DatasetError, DatasetInfo

__all__ = ["channel_labels", "route_channels"]


def channel_labels(info: DatasetInfo) -> list[str]:
    """Each channel of a dataset (along C; one for a dataset without a C axis) by its name, else its index as
    text."""
    return labels_of(info.channel_names, info.shape[info.axes.index("C")] if "C" in info.axes else 1)


def route_channels(models: ModelSet, labels: Sequence[str], where: str) -> tuple[list[str | None], list[str]]:
    """Per channel (``labels``, as :func:`channel_labels` gives them): the model of the set that serves it, None:
    no model (raw); and the channels the set names that are not among ``labels`` (their models go unused: one set
    serves many files, so this is said, not refused). Two names in the set for one channel (``DAPI`` and ``0``) are
    refused, naming ``where`` (the file)."""
    routes: list[str | None] = [models.default] * len(labels)
    given: dict[int, str] = {}
    unused: list[str] = []
    for key, model in models.channels.items():
        try:
            c = channel_index(key, list(labels), len(labels))
        except ValueError:
            unused.append(key)
            continue
        if c in given:
            raise DatasetError(f"{where}: expected one model per channel, got two for its channel {labels[c]!r}: "
                               f"--model {given[c]}={models.channels[given[c]]} and --model {key}={model}")
        given[c], routes[c] = key, model
    return routes, unused
