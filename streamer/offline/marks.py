"""Planes of ``n2n denoise``'s input that n2n denoised already, and what the command does about them.

A plane denoised twice is smoother than the model makes it and looks like a better result than it is, so the
command never does it without being asked. It reads the marks the input carries (its own, not a partial
output's):

* ``n2n denoise``'s output: its record of the planes that hold denoised pixels (:data:`DENOISED_NAMESPACE`; an
  OME-Zarr made by an earlier release: its job record, the planes of the channel it denoised); it names the file
  it was made from;
* per-plane metadata ``n2n-denoised: true``: a recording made through the pycromanager hook (NDTiff), the
  ``denoised`` channel of an ``n2n bridge`` recording (whose metadata is kept per time point: its ``raw`` channel
  holds the camera's frames, and a frame the bridge kept raw says ``n2n-denoised: false``).

Among the planes a run would denoise (``--channel``: that channel's), a marked one refuses the run (one line: the
file, how many, where the raw record is when the metadata says it, and the flags) unless ``--denoise-again``
(denoise them too, with one warning) or ``--skip-denoised`` (denoise only the others, copying the marked ones as
they are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datasets import DatasetError
from ..datasets.base import Reader
from .store import DENOISED_NAMESPACE, FLAGS_NAME, store_record

__all__ = ["DENOISED_KEY", "AlreadyDenoised", "Marks", "from_ranges", "read_marks", "refusal", "to_ranges"]

DENOISED_KEY = "n2n-denoised"
RAW_CHANNEL = "raw"
"""The channel of an ``n2n bridge`` recording that holds the camera's frames."""


class AlreadyDenoised(DatasetError):
    """The input holds planes n2n denoised already, among those the run would denoise (one line, see
    :func:`refusal`)."""


@dataclass(frozen=True)
class Marks:
    """The input's planes (flat indices) that hold denoised pixels, how that is known, and what to denoise
    instead (empty: nothing the metadata names)."""

    planes: frozenset[int]
    how: str = ""
    instead: str = ""


def to_ranges(planes: set[int] | frozenset[int] | list[int]) -> list[list[int]]:
    """Sorted planes as ``[START, STOP)`` ranges."""
    runs: list[list[int]] = []
    for p in sorted(planes):
        if runs and runs[-1][1] == p:
            runs[-1][1] = p + 1
        else:
            runs.append([p, p + 1])
    return runs


def from_ranges(ranges: Any, planes: int) -> set[int] | None:
    """The planes of ``[START, STOP)`` ranges below ``planes`` (None: not a list of ranges)."""
    if not isinstance(ranges, list):
        return None
    out: set[int] = set()
    for item in ranges:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item)):
            return None
        out.update(range(max(0, item[0]), min(planes, item[1])))
    return out


def _true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _from_record(record: Any, planes: int, where: str) -> Marks | None:
    """Marks from ``n2n denoise``'s record of its output's denoised planes."""
    if not isinstance(record, dict):
        return None
    marked = from_ranges(record.get("planes"), planes)
    if marked is None:
        return None
    made_from = record.get("input")
    instead = f"it was made by n2n denoise from {made_from}: denoise that instead" if made_from else ""
    return Marks(frozenset(marked), f"{where} records them as denoised by n2n denoise", instead)


def _from_job(store: Path, ours: dict[str, Any], planes: int, channel_of: Any) -> Marks | None:
    """An OME-Zarr written by an earlier ``n2n denoise`` (or one it is still writing): the planes of the channel
    its job denoised, but those its checks kept raw and those of a channel its model set had no model for."""
    job = ours.get("job")
    if not isinstance(job, dict):
        return None
    channel = job.get("channel")
    per_channel = job.get("models")  # a model per channel: [{"channel": NAME, "model": PATH or null}, ...]
    raw = ({c for c, m in enumerate(per_channel) if isinstance(m, dict) and m.get("model") is None}
           if isinstance(per_channel, list) else set())
    marked = {p for p in range(planes) if (channel is None or channel_of(p) == channel)
              and (channel_of(p) or 0) not in raw}
    flagged = ours.get("flagged_planes")
    if isinstance(flagged, dict):
        for flag, kept in flagged.items():
            if str(flag).startswith("raw:") and isinstance(kept, list):
                marked -= {p for p in kept if isinstance(p, int)}
    if not job.get("complete", False) and (store / FLAGS_NAME).is_file():  # unfinished: its flags log says
        for line in (store / FLAGS_NAME).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and any(f.startswith("raw:") for f in parts[1].split(",")):
                marked.discard(int(parts[0]))
    missing = ours.get("missing_planes")
    if isinstance(missing, dict) and isinstance(missing.get("planes"), dict):
        marked -= {int(p) for p in missing["planes"] if str(p).isdigit()}
    made_from = job.get("input")
    what = "its job record says an n2n denoise output" + ("" if job.get("complete") else ", unfinished")
    instead = f"it was made by n2n denoise from {made_from}: denoise that instead" if made_from else ""
    return Marks(frozenset(marked), what, instead)


def read_marks(reader: Reader) -> Marks:
    """The planes of an open input (opened with its per-plane metadata) that hold denoised pixels."""
    info = reader.info
    names = info.channel_names or []
    has_c = "C" in info.axes

    def channel_of(p: int) -> int | None:
        return info.index(p)["C"] if has_c else None

    raw_channel = names.index(RAW_CHANNEL) if has_c and RAW_CHANNEL in names else None
    if reader.kind == "tiff":
        notes = getattr(reader, "notes", {}) or {}
        if DENOISED_NAMESPACE in notes:
            try:
                record = json.loads(notes[DENOISED_NAMESPACE])
            except (json.JSONDecodeError, TypeError):
                record = None
            marks = _from_record(record, info.planes, "its OME-XML")
            if marks is not None:
                return marks
    elif reader.kind == "zarr":
        ours = store_record(Path(reader.path))
        if ours is not None:
            marks = _from_record(ours.get("denoised_planes"), info.planes, "its attributes")
            if marks is None:
                marks = _from_job(Path(reader.path), ours, info.planes, channel_of)
            if marks is not None:
                return marks
    meta = info.plane_metadata or []
    # a bridge recording keeps one metadata entry per time point: its raw channel holds the camera's frames
    per_frame = bool(getattr(reader, "frame_metadata", False))
    marked = frozenset(p for p, m in enumerate(meta) if isinstance(m, dict) and _true(m.get(DENOISED_KEY))
                       and not (per_frame and raw_channel is not None and channel_of(p) == raw_channel))
    if not marked:
        return Marks(frozenset())
    instead = ""
    if raw_channel is not None and not any(channel_of(p) == raw_channel for p in marked):
        instead = (f"its raw record is channel '{RAW_CHANNEL}' (the camera's frames): pass --channel {RAW_CHANNEL} "
                   "to denoise that one (the other channels are copied)")
    elif any(isinstance(m, dict) and _true(m.get("n2n-raw-saved")) for m in meta):
        instead = ("the hook saved the raw frames (n2n-raw-saved: true) in the file given as its keep_raw: "
                   "denoise that one instead")
    return Marks(marked, f"{DENOISED_KEY}: true in their metadata", instead)


def refusal(source: Path, marks: Marks, marked: int, planes: int) -> str:
    """One line: ``marked`` of the ``planes`` a run would denoise are denoised already; what to do."""
    instead = marks.instead or "denoise the raw recording (the camera's frames) instead"
    rest = planes - marked
    others = (f", or --skip-denoised to denoise only the other {rest} and copy these as they are" if rest else "")
    return (f"{source}: {marked} of the {planes} planes to denoise are denoised already ({marks.how}); denoising "
            f"them again over-smooths them: {instead}; or pass --denoise-again to denoise them anyway{others}")
