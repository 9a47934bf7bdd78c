"""``n2n grab --mda``: Noise2Noise training bursts at every place of a multi-dimensional acquisition.

A session of several channels, stage positions, grid tiles and z-planes needs training frames of each: a model per
channel, trained on frames like those it will denoise. For each place of a useq-schema ``MDASequence`` (position,
grid, channel, z, as :func:`streamer.core.streams.stream_key` names it) this records a burst of N consecutive frames.
pymmcore-plus's own runner and engine run a sequence derived from the user's (:mod:`.grab_plan`, which checks it all
before anything moves): its time plan replaced by N loops at interval 0, time the innermost axis, every channel at
every loop; so the engine moves the stages, sets each channel's preset and exposure, and takes each burst as one run
of the camera at its own rate (hardware sequencing), and a frame's place is its event's.

Written: one OME-TIFF per (position, grid, z), axes TCYX, the channels in the sequence's order under their names
(what ``n2n train --per-channel`` and ``--channel NAME`` read), each z-plane its own file (training refuses a
z-stack: neighbouring planes are not repeated frames). While acquiring, each burst goes to its own single-channel
spool file, a valid OME-TIFF at every moment; when the run ends, however it ends (done, stopped, Ctrl-C), each
place's complete bursts are interleaved into its file (written under a temporary name, renamed when whole; Ctrl-C
and SIGTERM wait meanwhile) and its spools removed. A failure there keeps the bursts not yet assembled in the spool
and says so (:class:`AssemblyError`). A burst cut short is kept alone in ``PREFIX_incomplete/`` (``incomplete/`` for a
folder; T, Y, X; ``n2n train --data`` takes it). :func:`analyse_bursts` then checks every stream for what breaks
Noise2Noise (:func:`streamer.micromanager.grab.analyse_frames`: saturation, motion between frames).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..core.signals import stop_signals_to
from ..core.streams import key_text, stream_key
from ..sources import OmeTiffWriter
from ..sources.micromanager import is_simulated, normalize_tagged_image
from .grab import analyse_frames
from .grab_plan import (
    INCOMPLETE,
    SPOOL,
    BurstPlan,
    burst_sequence,
    check_channels,
    event_stream,
    plan_bursts,
    plan_grab,
    safe_name,
    targets,
)

__all__ = ["INCOMPLETE", "SPOOL", "AssemblyError", "BurstPlan", "BurstsReport", "StreamBursts", "analyse_bursts",
           "burst_sequence", "check_channels", "plan_bursts", "plan_grab", "record_bursts", "targets"]

log = logging.getLogger("n2n.micromanager")


class AssemblyError(OSError):
    """A place's file could not be assembled from its bursts: the message names the spool folder that keeps the
    bursts not assembled, and what to do."""


@dataclass
class StreamBursts:
    """One stream's burst (a place and a channel): where it is and what its frames showed."""

    stream: str
    """Its stream key as text (:func:`streamer.core.streams.key_text`)."""
    channel: str | None
    file: str
    """The file holding it: its place's TCYX file, or for a burst cut short its own in the grab's ``incomplete``
    folder."""
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
    streams_planned: int = 0
    streams: dict[str, StreamBursts] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    """The streams planned of which not a frame was recorded (a run stopped early, or a burst the runner skipped)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def short(self) -> bool:
        """Fewer frames than planned though the run was not stopped: the runner skipped events, or a burst ended
        early."""
        return not self.stopped and self.frames < self.frames_planned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_bursts(core: Any, plan: BurstPlan, *, progress: Callable[[int, int], None] | None = None,
                  stop: threading.Event | None = None) -> BurstsReport:
    """Run ``plan`` (:func:`plan_grab`) on ``core`` (pymmcore-plus's runner) and write one OME-TIFF per (position,
    grid, z). ``progress(done, planned)`` after each frame; ``stop`` cancels the run (a burst under way is cut
    short); an interruption (Ctrl-C) leaves valid files for what was recorded and is re-raised after. The streams
    planned but not recorded are listed in the report (``missing``), each with a warning unless the run was
    stopped. :class:`AssemblyError` where a file could not be assembled (the bursts not assembled stay in the
    spool)."""
    frames, places, files = plan.frames, plan.places, plan.files
    planned = plan.frames_planned
    report = BurstsReport(out=plan.out, frames_per_burst=frames, frames_planned=planned,
                          files=[str(files[key_text(p.key)]) for p in places], streams_planned=len(plan.streams))
    camera = core.getCameraDevice()
    simulated = is_simulated(core, camera)
    bits = int(core.getImageBitDepth())
    stop = stop or threading.Event()
    recorder = _Recorder(core, plan.spool, frames, planned, simulated, progress, stop)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            if stop.is_set():
                core.mda.cancel()
                return

    watcher = threading.Thread(target=watch, name="n2n-grab-watch", daemon=True)
    plan.folder.mkdir(parents=True, exist_ok=True)
    plan.spool.mkdir()
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
        watcher.join(5)
        recorder.close()
        report.stopped = stop.is_set() or recorder.error is not None
        _assemble(report, plan, recorder)
    if recorder.error is not None:
        raise recorder.error
    if recorder.dtype is not None:
        report.shape, report.dtype = recorder.shape, recorder.dtype.name
        report.max_value = float(2**bits - 1) if recorder.dtype.kind == "u" and bits > 0 else float("inf")
    report.missing = [s for s in plan.streams if s not in recorder.places]
    if not report.stopped:
        report.warnings.extend(f"{s}: no frame recorded (the runner skipped its burst; its log says why)"
                               for s in report.missing)
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
        place, stream, channel, axes = event_stream(event)
        pixels, tags = normalize_tagged_image(img, dict(meta.get("camera_metadata") or {}))
        writer = self.writers.get(stream)
        if writer is None:
            for other in self.writers.values():  # the burst before is over
                other.close()
            safe = safe_name(f"{len(self.writers):04d}_{channel or 'frames'}")
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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """While inside (in the main thread, which alone receives signals): Ctrl-C and SIGTERM are logged and waited
    out, not raised: the files being assembled are finished first (the acquisition is over; this is short)."""

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("%s received while the files are assembled: they are finished first (the acquisition is over)",
                    signal.Signals(signum).name)

    with stop_signals_to(on_signal):
        yield


def _assemble(report: BurstsReport, plan: BurstPlan, recorder: _Recorder) -> None:
    """Each place's complete bursts interleaved into its TCYX file (channels in acquisition order), then its spools
    removed (the disk holds the grab once, plus one place); a burst cut short moved alone to ``incomplete``; the
    report's streams filled in. Ctrl-C and SIGTERM wait meanwhile; :class:`AssemblyError` where a file could not
    be written, the bursts not assembled kept in the spool."""
    by_place: dict[str, list[str]] = {}
    for stream, at in recorder.places.items():
        by_place.setdefault(at, []).append(stream)
    with _signals_held():
        for place in plan.places:
            text = key_text(place.key)
            target = plan.files[text]
            streams = by_place.get(text, [])
            complete = [s for s in streams if len(recorder.writers[s]) == recorder.frames]
            if complete:
                try:
                    _interleave(target, [recorder.writers[s] for s in complete],
                                [recorder.channels[s] for s in complete], recorder.simulated)
                except Exception as exc:
                    raise _assembly_error(plan, report, target, exc) from exc
                for s in complete:
                    recorder.writers[s].path.unlink()
            for s in streams:
                _account(report, plan, recorder, s, target, complete)
        report.files = [f for f in report.files if Path(f).exists()]
        shutil.rmtree(plan.spool, ignore_errors=True)


def _account(report: BurstsReport, plan: BurstPlan, recorder: _Recorder, s: str, target: Path,
             complete: list[str]) -> None:
    """Stream ``s`` in the report, its burst in ``target`` or, cut short, moved alone to ``incomplete``."""
    writer, channel = recorder.writers[s], recorder.channels[s]
    n = len(writer)
    report.frames += n
    if s in complete:
        where, index = target, (complete.index(s) if channel is not None else None)
    else:
        plan.incomplete.mkdir(exist_ok=True)
        stem = target.name.removesuffix(".ome.tif")
        where = plan.incomplete / f"{stem}_{safe_name(channel or 'frames')}.ome.tif"
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


def _assembly_error(plan: BurstPlan, report: BurstsReport, target: Path, exc: Exception) -> AssemblyError:
    """What a failure to assemble ``target`` leaves, and what to do, in one line."""
    written = [f for f in report.files if Path(f).exists()]
    kept = sorted(plan.spool.glob("*.ome.tif")) if plan.spool.is_dir() else []
    return AssemblyError(
        f"{target}: could not be assembled ({type(exc).__name__}: {exc}); {len(written)} of {len(plan.files)} "
        f"file(s) were written whole before it, and the {len(kept)} burst(s) not assembled are kept in {plan.spool} "
        f"(a valid OME-TIFF (T, Y, X) each, named by its channel; n2n train --data takes them, a channel at a "
        f"time): free space and grab again into a new --out, or move them out of {plan.spool} to keep them")


def _interleave(path: Path, writers: list[OmeTiffWriter], channels: list[str | None], simulated: bool) -> None:
    """Bursts of one place (same length), each in its own spool file, as one OME-TIFF (T, C, Y, X); each time
    point's metadata holds each channel's frame's. Written under a temporary name beside ``path`` (hidden, not a
    TIFF's suffix) and renamed to it when whole: a file at ``path`` is always complete."""
    names = tuple(c if c is not None else str(i) for i, c in enumerate(channels))
    first = writers[0]
    shape = (first.frame_shape[0], first.frame_shape[1])
    partial = path.with_name(f".{path.name}.part")
    try:
        with OmeTiffWriter(partial, shape, first.dtype, channels=names if channels != [None] else (),
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
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


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
