"""Where a frame comes from: its stream key, and its channel. One rule for every path that keeps a K-frame history.

A live-imaging session is multi-dimensional: channels, stage positions, grid tiles and z-planes, repeated over time.
A frame's Noise2Noise partner and its K-frame history are the frames *of the same place* (position, grid, channel,
z) before it in time, never its neighbour in acquisition order (t0 c0, t0 c1, t1 c0 …: the next channel, or the
next plane, comes first). :func:`stream_key` turns what an acquisition says of a frame into that place:

* pycromanager's ``Axes`` (``{"time": 3, "channel": "GFP", "z": 2, "position": 0}``),
* pymmcore-plus's ``MDAEvent.index`` (``{"t": 3, "p": 0, "c": 1, "z": 2}``) with the channel's config name,
* a file's axes (``n2n denoise``: every index but T's);

the time axis dropped, the names made one vocabulary (``c`` → ``channel``, ``p`` → ``position``, ``g`` → ``grid``),
the channel given by its name where there is one (a model is chosen by name, see :mod:`.modelset`). The server, the
pycromanager hook, the bridge, ``n2n denoise`` and the MDA engine all key by it; ``meta.stream`` carries it over the
wire and ``meta.channel`` the channel (:func:`channel_of` reads it back).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["AXIS_NAMES", "MAX_KEY_AXES", "TIME_AXES", "channel_index", "channel_labels", "channel_of", "key_text",
           "stream_key"]

TIME_AXES = frozenset({"time", "t", "frame"})
"""The axes along which one stream goes on; every other axis names a stream of its own."""
AXIS_NAMES = {"c": "channel", "p": "position", "g": "grid", "z": "z"}
"""pymmcore-plus's one-letter MDA axes in pycromanager's (and this product's) words; other names are kept."""
MAX_KEY_AXES = 8
"""A key keeps at most this many axes (a sender's metadata is not trusted to be small)."""


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def stream_key(axes: Mapping[str, Any] | None, channel: str | None = None) -> dict[str, Any] | None:
    """The place a frame comes from: ``axes`` without time, names made one vocabulary, sorted; ``channel`` (a
    name) replaces the channel's index. None for a frame with no place but time (one stream, as a plain live
    view is). Values are kept plain (numbers, text); at most :data:`MAX_KEY_AXES` axes."""
    if not isinstance(axes, Mapping):
        axes = {}
    where: dict[str, Any] = {}
    for k, v in axes.items():
        name = str(k).lower()
        if name in TIME_AXES:
            continue
        where[AXIS_NAMES.get(name, str(k))] = _plain(v)
    if channel is not None:
        where["channel"] = str(channel)
    return dict(sorted(where.items())[:MAX_KEY_AXES]) or None


def key_text(key: Any) -> str:
    """A stream key as one short text (what a history is filed under): ``""`` for no key."""
    return "" if key is None else json.dumps(key, separators=(",", ":"), sort_keys=True, default=str)[:256]


def channel_of(meta: Any) -> str | None:
    """The channel a frame's metadata names: ``meta["channel"]``, else its stream key's ``channel``; None for a
    frame that names none (served by the default model, as a single-channel session is)."""
    if not isinstance(meta, Mapping):
        return None
    channel = meta.get("channel")
    if channel is None:
        stream = meta.get("stream")
        channel = stream.get("channel") if isinstance(stream, Mapping) else None
    if channel is None or isinstance(channel, Mapping | list):
        return None
    return str(channel)[:128]


def channel_labels(names: Sequence[str | None] | None, count: int) -> list[str]:
    """Each of a file's ``count`` channels by its name, else its index as text (``"0"``, ``"1"``): what a model set
    routes by. Names that do not go one per channel (fewer or more than ``count``) name none of them."""
    names = list(names or [])
    if len(names) != count:
        names = []
    return [str(names[c]) if names and names[c] else str(c) for c in range(count)]


def channel_index(channel: str | int, names: Sequence[str], count: int) -> int:
    """The index along C of ``channel``: one of ``names`` (a file's channel names), else an index
    ``0..count-1``. Raises ValueError naming what was expected and what came (the caller adds the file)."""
    text = str(channel)
    if text in names:
        return list(names).index(text)
    if text.isascii() and text.isdigit() and int(text) < count:
        return int(text)
    listed = ", ".join(repr(n) for n in names) if names else "unnamed"
    raise ValueError(f"--channel {text}: expected a channel index 0..{count - 1} or a name ({listed}), got {text!r}")
