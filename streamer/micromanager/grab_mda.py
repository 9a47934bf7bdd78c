"""``n2n grab --mda``: Noise2Noise training bursts at every place of a multi-dimensional acquisition.

A session of several channels, stage positions, grid tiles and z-planes needs training frames of each: a model per
channel, trained on frames like those it will denoise. For each place of a useq-schema ``MDASequence`` (position,
grid, channel, z, as :func:`streamer.core.streams.stream_key` names it) this records a burst of N consecutive frames.
pymmcore-plus's own runner and engine run a sequence derived from the user's (:func:`burst_sequence`): its time plan
replaced by N loops at interval 0, time the innermost axis, every channel at every loop; so the engine moves the
stages, sets each channel's preset and exposure, and takes each burst as one run of the camera at its own rate
(hardware sequencing), and a frame's place is its event's.

Written: one OME-TIFF per (position, grid, z), axes TCYX, the channels in the sequence's order under their names
(what ``n2n train --per-channel`` and ``--channel NAME`` read), each z-plane its own file (training refuses a
z-stack: neighbouring planes are not repeated frames). While acquiring, each burst goes to its own single-channel
spool file, a valid OME-TIFF at every moment; when the run ends, however it ends (done, stopped, Ctrl-C), each
place's complete bursts are interleaved into its file and the spools removed. A burst cut short is kept alone in
``incomplete/`` (T, Y, X; ``n2n train --data`` takes it). :func:`analyse_bursts` then checks every stream for what
breaks Noise2Noise (:func:`streamer.micromanager.grab.analyse_frames`: saturation, motion between frames).
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..core.streams import key_text, stream_key
from ..sources import OmeTiffWriter
from ..sources.micromanager import is_simulated, normalize_tagged_image
from .grab import analyse_frames
from .mda import event_axes

__all__ = ["BurstPlan", "BurstsReport", "StreamBursts", "analyse_bursts", "burst_sequence", "check_channels",
           "plan_bursts", "plan_grab", "record_bursts", "targets"]

log = logging.getLogger("n2n.micromanager")

SPOOL = ".n2n-grab-spool"
"""The folder beside the files where bursts are spooled while they are acquired (removed after)."""
INCOMPLETE = "incomplete"
"""The folder beside the files where a burst cut short is kept."""
_PLACE_LETTERS = {"position": "p", "grid": "g", "z": "z"}
_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")


@dataclass
class StreamBursts:
    """One stream's burst (a place and a channel): where it is and what its frames showed."""

    stream: str
    """Its stream key as text (:func:`streamer.core.streams.key_text`)."""
    channel: str | None
    file: str
    """The file holding it: its place's TCYX file, or for a burst cut short its own in ``incomplete/``."""
    channel_index: int | None
    """Its index along C in ``file`` (None: a file without channels)."""
    frames: int
    complete: bool
    exposure_ms: float | None = None
    consecutive: bool | None = None
    """The camera's image numbers go up by one from frame to frame (None: the camera gives none)."""
    saturated_fraction: list[float] = field(default_factory=list)
    correlation: list[float] = field(default_factory=list)
    shift_px: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class BurstsReport:
    """What ``n2n grab --mda`` recorded: a file per place, a burst per stream."""

    out: str
    frames_per_burst: int
    frames_planned: int
    shape: tuple[int, int] = (0, 0)
    dtype: str = ""
    max_value: float = float("inf")
    """The camera's largest value (saturation)."""
    frames: int = 0
    seconds: float = 0.0
    stopped: bool = False
    files: list[str] = field(default_factory=list)
    """The training files, one per (position, grid, z), in acquisition order."""
    incomplete: list[str] = field(default_factory=list)
    streams: dict[str, StreamBursts] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _safe(text: str) -> str:
    """``text`` as a piece of a file name."""
    return re.sub(r"[^\w.-]+", "_", text)


def _place_name(key: dict[str, Any] | None) -> str:
    """A place as a file name: ``p000_g001_z002`` (position, grid, z, then any other axis by its name)."""
    def part(k: str, v: Any) -> str:
        letter = _PLACE_LETTERS.get(k) or _safe(k)
        return f"{letter}{v:03d}" if isinstance(v, int) else f"{letter}-{_safe(str(v))}"

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
        axes = event_axes(event)
        channel = axes.pop("channel", None)
        channel = None if channel is None else str(channel)
        key = stream_key(axes)
        place = places.setdefault(key_text(key), _Place(key, _place_name(key)))
        if channel not in place.channels:
            place.channels.append(channel)
        streams.setdefault(key_text(stream_key(axes, channel)), []).append((int(axes.get("time", 0)), event))
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
    """Every channel of ``sequence`` (and of its positions' own sequences) is a preset of the core's config group;
    ValueError naming the one that is not and the presets there are."""
    channels = [*sequence.channels, *(ch for p in sequence.stage_positions if p.sequence is not None
                                      for ch in p.sequence.channels)]
    for ch in channels:
        if not core.isGroupDefined(ch.group):
            groups = ", ".join(repr(str(g)) for g in core.getAvailableConfigGroups()) or "none"
            raise ValueError(f"channel {ch.config!r}: expected a config group {ch.group!r} in the core, got none of "
                             f"that name (its groups: {groups})")
        if not core.isConfigDefined(ch.group, ch.config):
            presets = ", ".join(sorted(str(c) for c in core.getAvailableConfigs(ch.group))) or "none"
            raise ValueError(f"channel {ch.config!r}: expected one of the core's {ch.group!r} presets ({presets}), "
                             f"got {ch.config!r}")


def targets(out: str | Path, places: list[_Place]) -> tuple[dict[str, Path], Path]:
    """Each place's file (by its key's text) and the folder they go in. ``out`` is a folder (it is one, ends
    with '/' or has no TIFF suffix: ``DIR/p000_z001.ome.tif``) or a prefix (``runs/grab/cells.ome.tif`` →
    ``runs/grab/cells_p000_z001.ome.tif``); a place of no axes but the channel takes the bare name."""
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
    return files, folder


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


def plan_grab(core: Any, sequence: Any, frames: int, out: str | Path) -> BurstPlan:
    """The bursts of ``frames`` consecutive frames at each place of ``sequence`` on ``core``, and where they go
    (``out``: a folder or a prefix, :func:`targets`). ValueError for fewer than 2 frames, a channel the core lacks
    or a sequence whose bursts would not be consecutive; FileExistsError where files of the grab are there already
    (nothing recorded is ever written over)."""
    if frames < 2:
        raise ValueError(f"--frames: expected at least 2 consecutive frames per burst for Noise2Noise, got {frames}")
    check_channels(core, sequence)
    derived = burst_sequence(sequence, frames)
    places, events, in_order = plan_bursts(derived, frames)
    files, folder = targets(out, places)
    taken = [p for p in [*files.values(), folder / SPOOL, folder / INCOMPLETE] if p.exists()]
    if taken:
        raise FileExistsError(f"{taken[0]} exists: expected a new --out for the bursts (a grab is never written "
                              f"over{f'; {len(taken)} of its files are there' if len(taken) > 1 else ''})")
    return BurstPlan(derived, events, in_order, frames, str(out), places, len(events), files, folder)


def record_bursts(core: Any, plan: BurstPlan, *, progress: Callable[[int, int], None] | None = None,
                  stop: threading.Event | None = None) -> BurstsReport:
    """Run ``plan`` (:func:`plan_grab`) on ``core`` (pymmcore-plus's runner) and write one OME-TIFF per (position,
    grid, z). ``progress(done, planned)`` after each frame; ``stop`` cancels the run (a burst under way is cut
    short); an interruption (Ctrl-C) leaves valid files for what was recorded and is re-raised after."""
    frames, places, files, folder = plan.frames, plan.places, plan.files, plan.folder
    planned = plan.frames_planned
    spool, incomplete = folder / SPOOL, folder / INCOMPLETE
    report = BurstsReport(out=plan.out, frames_per_burst=frames, frames_planned=planned,
                          files=[str(files[key_text(p.key)]) for p in places])
    camera = core.getCameraDevice()
    simulated = is_simulated(core, camera)
    bits = int(core.getImageBitDepth())
    stop = stop or threading.Event()
    recorder = _Recorder(core, spool, frames, planned, simulated, progress, stop)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            if stop.is_set():
                core.mda.cancel()
                return

    watcher = threading.Thread(target=watch, name="n2n-grab-watch", daemon=True)
    folder.mkdir(parents=True, exist_ok=True)
    spool.mkdir()
    core.mda.events.frameReady.connect(recorder.frame)
    t0 = time.perf_counter()
    watcher.start()
    try:
        # regrouped events or not, the engine runs each burst as one hardware sequence
        core.mda.run(plan.sequence if plan.in_order else plan.events)
    finally:
        done.set()
        core.mda.events.frameReady.disconnect(recorder.frame)
        try:
            if core.isSequenceRunning():  # an interruption inside a burst: the camera is still running
                core.stopSequenceAcquisition()
        except Exception as exc:  # a core already closed
            log.debug("stopping the sequence: %s", exc)
        report.seconds = round(time.perf_counter() - t0, 3)
        recorder.close()
        report.stopped = stop.is_set() or recorder.error is not None
        _assemble(report, places, files, recorder, incomplete)
        shutil.rmtree(spool, ignore_errors=True)
        watcher.join(5)
    if recorder.error is not None:
        raise recorder.error
    if recorder.dtype is not None:
        report.shape, report.dtype = recorder.shape, recorder.dtype.name
        report.max_value = float(2**bits - 1) if recorder.dtype.kind == "u" and bits > 0 else float("inf")
    return report


class _Recorder:
    """The runner's frames, each to its stream's spool file (one open at a time: bursts come one after the other)."""

    def __init__(self, core: Any, spool: Path, frames: int, planned: int, simulated: bool,
                 progress: Callable[[int, int], None] | None, stop: threading.Event) -> None:
        self.core, self.spool, self.frames, self.planned = core, spool, frames, planned
        self.simulated, self.progress, self.stop = simulated, progress, stop
        self.writers: dict[str, OmeTiffWriter] = {}
        self.channels: dict[str, str | None] = {}
        self.places: dict[str, str] = {}
        self.count = 0
        self.error: BaseException | None = None
        self.shape: tuple[int, int] = (0, 0)
        self.dtype: np.dtype | None = None

    def frame(self, img: np.ndarray, event: Any, meta: Any) -> None:
        if self.error is not None:
            return
        try:
            self._write(img, event, meta)
        except Exception as exc:  # a full disk: the runner would only log it; stop, keep what is there, re-raise
            log.warning("frame %s not recorded: %s: %s", dict(event.index), type(exc).__name__, exc)
            self.error = exc
            self.core.mda.cancel()
            return
        self.count += 1
        if self.progress is not None:
            self.progress(self.count, self.planned)
        if self.stop.is_set():
            self.core.mda.cancel()  # a burst under way is cut here (the runner tells the engine)

    def _write(self, img: np.ndarray, event: Any, meta: Any) -> None:
        axes = event_axes(event)
        channel = axes.pop("channel", None)
        channel = None if channel is None else str(channel)
        place = key_text(stream_key(axes))
        stream = key_text(stream_key(axes, channel))
        pixels, tags = normalize_tagged_image(img, dict(meta.get("camera_metadata") or {}))
        writer = self.writers.get(stream)
        if writer is None:
            for other in self.writers.values():  # the burst before is over
                other.close()
            safe = _safe(f"{len(self.writers):04d}_{channel or 'frames'}")
            name = "n2n grab (simulated camera)" if self.simulated else "n2n grab"
            writer = self.writers[stream] = OmeTiffWriter(self.spool / f"{safe}.ome.tif", pixels.shape,
                                                          pixels.dtype, name=name)
            self.channels[stream], self.places[stream] = channel, place
            if self.dtype is None:
                self.shape, self.dtype = (int(pixels.shape[0]), int(pixels.shape[1])), pixels.dtype
        exposure = meta.get("exposure_ms")
        tags.setdefault("Exposure-ms", float(exposure) if isinstance(exposure, int | float) else exposure)
        tags["n2n-stream"] = stream_key(axes, channel)
        tags["n2n-stage-um"] = {"x": event.x_pos, "y": event.y_pos, "z": event.z_pos}
        if self.simulated:
            tags["n2n-simulated"] = True
        writer.write(pixels, tags)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _assemble(report: BurstsReport, places: list[_Place], files: dict[str, Path], recorder: _Recorder,
              incomplete: Path) -> None:
    """Each place's complete bursts interleaved into its TCYX file (channels in acquisition order); a burst cut
    short moved alone to ``incomplete``; the report's streams filled in."""
    by_place: dict[str, list[str]] = {}
    for stream, at in recorder.places.items():
        by_place.setdefault(at, []).append(stream)
    for place in places:
        text = key_text(place.key)
        streams = by_place.get(text, [])
        complete = [s for s in streams if len(recorder.writers[s]) == recorder.frames]
        if complete:
            _interleave(files[text], [recorder.writers[s] for s in complete],
                        [recorder.channels[s] for s in complete], recorder.simulated)
        for s in streams:
            writer, channel = recorder.writers[s], recorder.channels[s]
            n = len(writer)
            report.frames += n
            if s in complete:
                where, index = files[text], (complete.index(s) if channel is not None else None)
            else:
                incomplete.mkdir(exist_ok=True)
                stem = files[text].name.removesuffix(".ome.tif")
                where = incomplete / f"{stem}_{_safe(channel or 'frames')}.ome.tif"
                shutil.move(str(writer.path), where)
                report.incomplete.append(str(where))
                index = None
            numbers: list[Any] = [m.get("ImageNumber") for m in writer.metadata]
            exposures = [m.get("Exposure-ms") for m in writer.metadata]
            report.streams[s] = StreamBursts(
                stream=s, channel=channel, file=str(where), channel_index=index, frames=n, complete=s in complete,
                exposure_ms=exposures[0] if exposures and isinstance(exposures[0], float) else None,
                consecutive=(all(b - a == 1 for a, b in itertools.pairwise(numbers))
                             if numbers and all(isinstance(v, int) for v in numbers) else None))
    report.files = [f for f in report.files if Path(f).exists()]


def _interleave(path: Path, writers: list[OmeTiffWriter], channels: list[str | None], simulated: bool) -> None:
    """Bursts of one place (same length), each in its own spool file, as one OME-TIFF (T, C, Y, X); each time
    point's metadata holds each channel's frame's."""
    names = tuple(c if c is not None else str(i) for i, c in enumerate(channels))
    first = writers[0]
    shape = (first.frame_shape[0], first.frame_shape[1])
    with OmeTiffWriter(path, shape, first.dtype, channels=names if channels != [None] else (),
                       name="n2n grab (simulated camera)" if simulated else "n2n grab") as out:
        spools = [tifffile.TiffFile(w.path) for w in writers]
        try:
            for t in range(len(first)):
                planes = [s.series[0].asarray(key=t) for s in spools]
                meta: dict[str, Any] = {"channels": {n: w.metadata[t] for n, w in zip(names, writers)}}
                if simulated:
                    meta["n2n-simulated"] = True
                out.write(planes if channels != [None] else planes[0], meta)
        finally:
            for s in spools:
                s.close()


def analyse_bursts(report: BurstsReport, saturation_fraction: float = 0.001, max_shift_px: float = 0.5) -> None:
    """Each stream's saturation, pair correlation and shift, and its warnings (image-number gaps too), from what
    was written; a report-wide warning where the files do not hold the same channels (``--per-channel`` takes files
    of one set of channels)."""
    for burst in report.streams.values():
        with tifffile.TiffFile(burst.file) as tif:
            series = tif.series[0]
            n_channels = series.shape[series.axes.index("C")] if "C" in series.axes else 1
            c = burst.channel_index or 0
            frames = (series.asarray(key=t * n_channels + c) for t in range(burst.frames))
            found = analyse_frames(frames, report.max_value, saturation_fraction, max_shift_px)
        burst.saturated_fraction = found["saturated_fraction"]
        burst.correlation = found["correlation"]
        burst.shift_px = found["shift_px"]
        burst.warnings = found["warnings"]
        if burst.consecutive is False:
            burst.warnings.insert(0, "the image numbers are not consecutive (the camera or Micro-Manager skipped "
                                  "frames): pairs across a gap are not consecutive")
        if not burst.complete:
            burst.warnings.insert(0, f"cut short at {burst.frames} of {report.frames_per_burst} frames (kept alone in "
                                  f"{burst.file})")
    channel_sets = {}
    for f in report.files:
        channel_sets[f] = tuple(b.channel for b in report.streams.values() if b.file == f)
    if len(set(channel_sets.values())) > 1:
        widest = max(channel_sets.values(), key=len)
        short = [f for f, cs in channel_sets.items() if cs != widest]
        report.warnings.append(f"{len(short)} file(s) hold other channels than {', '.join(map(str, widest))} (first "
                               f"{short[0]}): n2n train --per-channel takes files of one set of channels")
