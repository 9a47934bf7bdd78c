"""What ``n2n grab --mda`` will record, checked before anything moves: a burst of N consecutive frames at each place
(position, grid, channel, z) of a useq-schema ``MDASequence``, the files it goes to and the room it needs.

pymmcore-plus's runner runs a sequence derived from the user's (:func:`burst_sequence`): its time plan replaced by N
loops at interval 0, time the innermost axis, every channel at every loop. :func:`plan_grab` checks the channels
against the core (each a preset of its group, each once), that every stream gets its N consecutive frames, that no
file of the grab is there already and that the disk holds what will be written; :class:`BurstPlan` is the result
(:func:`streamer.micromanager.grab_mda.record_bursts` runs it).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.filenames import safe_name
from ..core.streams import key_text, stream_key
from .mda import event_axes

__all__ = ["INCOMPLETE", "SPOOL", "BurstPlan", "burst_sequence", "check_channels", "event_stream", "plan_bursts",
           "plan_grab", "safe_name", "size_text", "targets"]

SPOOL = ".n2n-grab-spool"
"""The hidden folder beside the files where bursts are spooled while they are acquired (``.PREFIX.n2n-grab-spool``
for a prefix), emptied place by place as each file is assembled."""
INCOMPLETE = "incomplete"
"""The folder beside the files where a burst cut short is kept (``PREFIX_incomplete`` for a prefix)."""
FRAME_OVERHEAD_BYTES = 4096
"""What a frame costs on disk beyond its pixels, at most: its TIFF page and its metadata (JSON and OME-XML)."""
SPACE_MARGIN = 0.05
"""The room asked for beyond the estimate, as a fraction of it (plus :data:`SPACE_SLACK_BYTES`)."""
SPACE_SLACK_BYTES = 64 * 2**20
_PLACE_LETTERS = {"position": "p", "grid": "g", "z": "z"}
_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")


@dataclass
class _Place:
    key: dict[str, Any] | None
    name: str
    channels: list[str | None] = field(default_factory=list)


def burst_sequence(sequence: Any, frames: int) -> Any:
    """``sequence`` with a burst of ``frames`` consecutive frames at each place: its time plan replaced by ``frames``
    loops at interval 0 (its stage positions' own time plans dropped: the one loop covers them), time moved
    innermost, every channel at every loop."""
    import useq

    def derive(seq: Any, time_plan: Any) -> Any:
        order = (*(str(a) for a in seq.axis_order if str(a) != "t"), "t")
        channels = tuple(ch.model_copy(update={"acquire_every": 1}) for ch in seq.channels)
        return seq.replace(axis_order=order, channels=channels, time_plan=time_plan)

    positions = tuple(p if p.sequence is None else p.model_copy(update={"sequence": derive(p.sequence, None)})
                      for p in sequence.stage_positions)
    return derive(sequence, useq.TIntervalLoops(interval=0, loops=frames)).replace(stage_positions=positions)


def event_stream(event: Any) -> tuple[str, str, str | None, dict[str, Any]]:
    """An event's place (its key's text), its stream (the same with its channel), its channel and its axes (time
    included, channel not)."""
    axes = event_axes(event)
    channel = axes.pop("channel", None)
    channel = None if channel is None else str(channel)
    return key_text(stream_key(axes)), key_text(stream_key(axes, channel)), channel, axes


def _place_name(key: dict[str, Any] | None) -> str:
    """A place as a file name: ``p000_g001_z002`` (position, grid, z, then any other axis by its name)."""
    def part(k: str, v: Any) -> str:
        letter = _PLACE_LETTERS.get(k) or safe_name(k)
        return f"{letter}{v:03d}" if isinstance(v, int) else f"{letter}-{safe_name(str(v))}"

    order = list(_PLACE_LETTERS)
    axes = sorted((key or {}).items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))
    return "_".join(part(k, v) for k, v in axes)


def plan_bursts(derived: Any, frames: int) -> tuple[list[_Place], list[Any], bool]:
    """The places of a derived sequence (:func:`burst_sequence`), each with its channels in acquisition order, and
    its events with each stream's ``frames`` time points one after the other: the sequence's own order, but for
    what useq puts inside the time loop (a stage position's own grid or z plan), whose bursts are gathered.
    Also whether that is the sequence's own order. ValueError where a stream would not get ``frames`` time points,
    once each."""
    places: dict[str, _Place] = {}
    streams: dict[str, list[tuple[int, Any]]] = {}  # (time point, event)
    order: list[Any] = []
    for event in derived:
        order.append(event)
        place_text, stream, channel, axes = event_stream(event)
        place = places.get(place_text)
        if place is None:
            key = stream_key(axes)
            place = places[place_text] = _Place(key, _place_name(key))
        if channel not in place.channels:
            place.channels.append(channel)
        streams.setdefault(stream, []).append((int(axes.get("time", 0)), event))
    for stream, timed in streams.items():
        ts = [t for t, _ in timed]
        if ts != list(range(frames)):
            raise ValueError(f"expected {frames} time points at each place, got stream {stream} with "
                             f"{ts[:8]}{'…' if len(ts) > 8 else ''}")
    names = [p.name for p in places.values()]
    if len(set(names)) != len(names):
        raise ValueError(f"expected a file name per place, got the same twice among {names}")
    grouped = [e for timed in streams.values() for _, e in timed]
    return list(places.values()), grouped, all(a is b for a, b in zip(order, grouped))


def check_channels(core: Any, sequence: Any) -> None:
    """Every channel of ``sequence`` (and of its positions' own sequences) is a preset of the core's config group,
    named once in its list; ValueError naming the one that is not and the presets there are, or the channels named
    twice (a stream is keyed by its channel's name: two exposures of one channel would be one stream)."""
    lists = [sequence.channels, *(p.sequence.channels for p in sequence.stage_positions if p.sequence is not None)]
    for channels in lists:
        repeated = [name for name, n in Counter(str(ch.config) for ch in channels).items() if n > 1]
        if repeated:
            said = "; ".join(f"{name!r} at " + ", ".join("its default exposure" if ch.exposure is None
                                                          else f"{ch.exposure:g} ms"
                                                          for ch in channels if str(ch.config) == name)
                             for name in repeated)
            raise ValueError(f"channels: expected each channel once (a burst per channel and place, filed under the "
                             f"channel's name), got {said}: keep one of each, or grab the others in a sequence of "
                             f"their own with another --out")
    for ch in (ch for channels in lists for ch in channels):
        if not core.isGroupDefined(ch.group):
            groups = ", ".join(repr(str(g)) for g in core.getAvailableConfigGroups()) or "none"
            raise ValueError(f"channel {ch.config!r}: expected a config group {ch.group!r} in the core, got none of "
                             f"that name (its groups: {groups})")
        if not core.isConfigDefined(ch.group, ch.config):
            presets = ", ".join(sorted(str(c) for c in core.getAvailableConfigs(ch.group))) or "none"
            raise ValueError(f"channel {ch.config!r}: expected one of the core's {ch.group!r} presets ({presets}), "
                             f"got {ch.config!r}")


def targets(out: str | Path, places: list[_Place]) -> tuple[dict[str, Path], Path, Path, Path]:
    """Each place's file (by its key's text), the folder they go in, and the grab's spool and ``incomplete``
    folders there. ``out`` is a folder (it is one, ends with '/' or has no TIFF suffix: ``DIR/p000_z001.ome.tif``,
    ``DIR/incomplete``) or a prefix (``runs/grab/cells.ome.tif`` → ``runs/grab/cells_p000_z001.ome.tif``,
    ``runs/grab/cells_incomplete``: another prefix in the same folder is another grab); a place of no axes but the
    channel takes the bare name."""
    text = str(out)
    path = Path(out)
    suffix = next((s for s in _TIFF_SUFFIXES if path.name.lower().endswith(s)), None)
    if text.endswith(("/", "\\")) or path.is_dir() or suffix is None:
        folder, stem = path, ""
    else:
        folder, stem = path.parent, path.name[: -len(suffix)]
    files = {}
    for place in places:
        name = "_".join(p for p in (stem, place.name) if p) or "bursts"
        files[key_text(place.key)] = folder / f"{name}.ome.tif"
    spool = folder / (f".{safe_name(stem)}{SPOOL}" if stem else SPOOL)
    incomplete = folder / (f"{safe_name(stem)}_{INCOMPLETE}" if stem else INCOMPLETE)
    return files, folder, spool, incomplete


def size_text(n: float) -> str:
    """Bytes as a person reads them (``3.2 GB``; powers of 1000, as disks are sold)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # (unreachable)


@dataclass
class BurstPlan:
    """What a grab will record, checked before anything moves (:func:`plan_grab`)."""

    sequence: Any
    """The derived sequence (:func:`burst_sequence`)."""
    events: list[Any]
    """Its events, each stream's burst one after the other (:func:`plan_bursts`)."""
    in_order: bool
    """The sequence's own order is the bursts': the runner runs the sequence (its handlers see it whole), else the
    events."""
    frames: int
    out: str
    places: list[_Place]
    frames_planned: int
    files: dict[str, Path]
    """Each place's file, by its key's text."""
    folder: Path
    spool: Path
    """Where the bursts are spooled while they are acquired (:func:`targets`)."""
    incomplete: Path
    """Where a burst cut short is kept."""
    streams: list[str]
    """Each stream's text (place and channel), in acquisition order."""
    frame_bytes: int
    """A frame on disk, at most (pixels plus :data:`FRAME_OVERHEAD_BYTES`)."""
    bytes_planned: int
    """The files, all together, at most."""
    bytes_needed: int
    """The most the grab holds on disk at once (every burst spooled, plus the largest place's file while it is
    assembled) with the margin."""


def plan_grab(core: Any, sequence: Any, frames: int, out: str | Path) -> BurstPlan:
    """The bursts of ``frames`` consecutive frames at each place of ``sequence`` on ``core``, and where they go
    (``out``: a folder or a prefix, :func:`targets`). ValueError for fewer than 2 frames, a channel the core lacks
    or names twice, or a sequence whose bursts would not be consecutive; FileExistsError where files of the grab
    are there already (nothing recorded is ever written over); OSError where the disk has not the room."""
    if frames < 2:
        raise ValueError(f"--frames: expected at least 2 consecutive frames per burst for Noise2Noise, got {frames}")
    check_channels(core, sequence)
    derived = burst_sequence(sequence, frames)
    places, events, in_order = plan_bursts(derived, frames)
    files, folder, spool, incomplete = targets(out, places)
    if spool.exists():
        raise FileExistsError(f"{spool} exists: an earlier grab into this --out stopped before its files were "
                              f"assembled (its bursts are there, a valid OME-TIFF each): expected a new --out, or "
                              f"those moved out of the way first (a grab is never written over)")
    taken = [p for p in [*files.values(), incomplete] if p.exists()]
    if taken:
        raise FileExistsError(f"{taken[0]} exists: expected a new --out for the bursts (a grab is never written "
                              f"over{f'; {len(taken)} of its files are there' if len(taken) > 1 else ''})")
    streams = list(dict.fromkeys(event_stream(e)[1] for e in events))
    frame_bytes = (int(core.getImageWidth()) * int(core.getImageHeight()) * int(core.getBytesPerPixel())
                   + FRAME_OVERHEAD_BYTES)
    planned = len(events) * frame_bytes
    largest = max(len(p.channels) for p in places) * frames * frame_bytes
    needed = int((planned + largest) * (1 + SPACE_MARGIN)) + SPACE_SLACK_BYTES
    _check_room(folder, needed, planned, len(events))
    return BurstPlan(derived, events, in_order, frames, str(out), places, len(events), files, folder, spool,
                     incomplete, streams, frame_bytes, planned, needed)


def _check_room(folder: Path, needed: int, planned: int, frames: int) -> None:
    """OSError where the disk holding ``folder`` (or the nearest folder above it that exists) has less than
    ``needed`` bytes free."""
    there = folder.absolute()
    while not there.exists() and there.parent != there:
        there = there.parent
    free = shutil.disk_usage(there).free
    if free < needed:
        raise OSError(f"{there}: expected {size_text(needed)} free for the grab ({frames} frames, "
                      f"{size_text(planned)} of files, each burst spooled before its place's file is assembled, "
                      f"with a margin), got {size_text(free)} free: free some, or grab fewer frames per burst "
                      f"(--frames), fewer places, or onto another disk (--out)")
