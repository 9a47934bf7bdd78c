"""Denoising inside a pymmcore-plus MDA: every frame of ``core.mda.run(sequence)`` denoised before it is written.

pymmcore-plus's MDA runner writes each frame its engine yields to its sink (ome-writers: OME-Zarr, OME-TIFF) and
emits ``frameReady`` (napari-micromanager's layers, a user's handlers) after; the documented way to change the pixels
written is a custom engine (pymmcore-plus docs/guides/custom_engine.md). :class:`DenoisingEngine` is that engine:
pymmcore-plus's own :class:`~pymmcore_plus.mda.MDAEngine` acquires, and each image goes

1. to the **raw record** first (its own ome-writers sink, same axes, channel names and positions as the
   acquisition: nothing acquired is lost, whatever comes of the denoising),
2. through a denoising server (``n2n serve``, or one started in this process), sent as a request with the frame's
   place (:func:`streamer.core.streams.stream_key`: position, grid, channel, z) as its stream and its channel
   config as its channel, so a K-frame model sees only that place's earlier frames and a model set routes each
   channel to its own model,
3. back to the runner, which writes the denoised image to the acquisition's own output and emits it.

A frame the server cannot serve well (no answer, refused, no model for its channel, a failed output check) goes on
RAW: written as it came, its ``frameReady`` metadata saying so under ``"n2n"`` (``{"denoised": false, "flag": …}``),
and counted (:meth:`DenoisingEngine.counts`). A frame of another size than the acquisition's (a position's or a
channel's camera setting: a width, a binning; a sequence's ROI holds for the whole run) is one pymmcore-plus's
writers cannot hold (they lose it, or write an unreadable file): it is kept, raw and denoised, in an OME-TIFF of its
size beside the raw record (``raw_24x32.ome.tif``: width × height, each plane's ``Axes`` in its metadata), said once
and counted (:attr:`DenoisingEngine.other_sizes`), and the acquisition's own files skip it. The denoising runs in
pymmcore-plus's acquisition thread, a frame at a time: while a frame is denoised the next waits in Micro-Manager's
circular buffer (a time loop at interval 0 runs at the camera's rate with hardware sequencing), so keep a frame's
denoising time below the frame interval for long fast runs. The denoising is
:class:`~streamer.micromanager.hook.DenoiseHook`'s, the pycromanager hook's, so both Micro-Manager paths behave alike::

    from pymmcore_plus import CMMCorePlus
    from streamer.micromanager.mda import DenoisingEngine

    core = CMMCorePlus(); core.loadSystemConfiguration()
    engine = DenoisingEngine(core, "tcp://127.0.0.1:5557", raw="run/raw.ome.zarr")   # a running n2n serve
    core.mda.set_engine(engine)
    core.mda.run(sequence, output="run/denoised.ome.zarr")
    engine.close()
"""

from __future__ import annotations

import logging
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymmcore_plus.mda import MDAEngine
from pymmcore_plus.mda._sink import OmeWritersSink

from ..core.streams import AXIS_NAMES, key_text, stream_key
from ..sources import OmeTiffWriter, next_file
from .hook import DenoiseHook

__all__ = ["FORMATS", "AcquisitionReport", "DenoisingEngine", "acquire", "event_axes", "read_sequence",
           "storage_overrides"]

FORMATS = {"ome-zarr": ".ome.zarr", "ome-tiff": ".ome.tif"}
"""The formats an acquisition is written in (pymmcore-plus's ome-writers), and their suffix."""

log = logging.getLogger("n2n.micromanager")

_LETTERS = {**AXIS_NAMES, "t": "time"}


def event_axes(event: Any) -> dict[str, Any]:
    """An MDA event's place in pycromanager's words (``{"time": 3, "position": 0, "channel": "GFP", "z": 2}``): its
    index, the channel given by its config name (what a model set routes by), the time kept (the hook numbers each
    stream's frames itself and drops it from the key)."""
    axes: dict[str, Any] = {_LETTERS.get(str(k), str(k)): v for k, v in dict(event.index).items()}
    channel = getattr(event, "channel", None)
    if channel is not None and getattr(channel, "config", None):
        axes["channel"] = str(channel.config)
    return axes


def storage_overrides(sequence: Any) -> dict[str, Any]:
    """What the acquisition's writer (pymmcore-plus's sink, ome-writers) is told beside ``sequence``: a time plan at
    interval 0 (as fast as possible) would be written with a time scale of 0 s, which readers refuse (napari: "scale
    values of 0"), so its time axis is written as frame numbers (scale 1, no unit); each frame's own time stays in
    its metadata (``delta_t``). Pass it as ``core.mda.run(..., dimension_overrides=storage_overrides(sequence))``."""
    interval = getattr(getattr(sequence, "time_plan", None), "interval", None)
    if interval is not None and interval.total_seconds() <= 0:
        # pymmcore-plus 0.18 applies an override with Dimension.model_copy(update=...): any field of the dimension,
        # though its DimensionOverride type names the chunking ones only (tests/test_open_in_napari.py checks it)
        return {"t": {"scale": 1.0, "unit": None}}
    return {}


def written_path(path: str | Path) -> Path:
    """Where ome-writers put the record meant for ``path``: ``path`` itself, or for an OME-TIFF of several
    positions the folder beside it of one file per position (``raw/raw_p000.ome.tif`` …)."""
    path = Path(path)
    folder = path.parent / path.name.split(".")[0]
    return folder if not path.exists() and folder.is_dir() else path


def is_taken(path: str | Path) -> bool:
    """Whether a record meant for ``path`` is there already (in either of :func:`written_path`'s forms)."""
    path = Path(path)
    return path.exists() or (path.parent / path.name.split(".")[0]).is_dir()


def next_free(path: Path) -> Path:
    """``path``, else ``raw_2.ome.zarr``, ``raw_3.ome.zarr`` … (the first no record takes)."""
    stem, dot, suffix = path.name.partition(".")
    n = 1
    while is_taken(path):
        n += 1
        path = path.with_name(f"{stem}_{n}{dot}{suffix}")
    return path


class DenoisingEngine(MDAEngine):
    """pymmcore-plus's MDA engine, denoising each image it acquires through a server before the runner writes it.

    ``endpoints``: the server's addresses (a ready file's ``endpoints``, or its request address as text; None: the
    default ``tcp://127.0.0.1:5557``). ``raw``: where the raw images go (a path ending ``.ome.zarr`` or
    ``.ome.tiff``, or an ``ome_writers.AcquisitionSettings``; None keeps no raw record, which :func:`n2n acquire`
    never does). ``timeout_s``: the longest wait for one frame's answer (then it goes on raw, and the server is
    asked again after a back-off, as the pycromanager hook does)."""

    def __init__(self, mmcore: Any, endpoints: dict[str, str] | str | None = None, *,
                 raw: str | Path | Any | None = None, overwrite: bool = False, timeout_s: float = 5.0,
                 use_hardware_sequencing: bool = True) -> None:
        super().__init__(mmcore, use_hardware_sequencing=use_hardware_sequencing)
        self.hook = DenoiseHook(endpoints, timeout_s)
        self._raw_target = raw
        self._overwrite = overwrite
        self._raw: OmeWritersSink | None = None
        self.raw_saved = 0
        self.raw_skipped = 0
        self.raw_errors = 0
        self._cameras = 1
        self.raw_records: list[str] = []
        """Where each acquisition's raw record went (a path taken already is never written over: the next free
        name, ``raw_2.ome.zarr``, unless ``overwrite``)."""
        self.streams: dict[str, Counter[str]] = {}
        """Per stream (its key as text): frames, denoised, and each reason a frame went on raw."""
        self.other_sizes: Counter[str] = Counter()
        """Frames of another size than the acquisition's, by the file beside the raw record that keeps them."""
        self._shape: tuple[int, int] | None = None  # the acquisition's frame size (its writers': height, width)
        self._beside: dict[tuple[int, ...], OmeTiffWriter] = {}

    # --- the sequence ------------------------------------------------------------------------------------------
    def setup_sequence(self, sequence: Any) -> Any:
        meta = super().setup_sequence(sequence)
        self._shape = None
        try:  # a multi-camera adapter: each event gives a frame per camera (the runner skips that many)
            summary: Any = meta or {}
            infos = summary["image_infos"]
            self._cameras = max(1, int(infos[0].get("num_camera_adapter_channels", 1)))
            self._shape = (int(infos[0]["height"]), int(infos[0]["width"]))
        except (KeyError, IndexError, TypeError, ValueError):
            self._cameras = 1
        if self._raw_target is not None:
            self._close_raw()
            target = self._raw_target
            if isinstance(target, str | Path) and not self._overwrite and is_taken(target):
                target = next_free(Path(target))  # the engine run again (napari's MDA widget): a new record each
                log.info("the raw record %s exists: this acquisition's goes to %s", self._raw_target, target)
            sink = OmeWritersSink.from_output(target, overwrite=self._overwrite,
                                              dimension_overrides=storage_overrides(sequence))
            sink.setup(sequence, meta)  # the acquisition's axes, channel names, positions, dtype
            self._raw = sink
            self.raw_records.append(str(target))
        return meta

    def teardown_sequence(self, sequence: Any) -> None:
        try:
            super().teardown_sequence(sequence)
        finally:
            self._close_raw()

    def setup_event(self, event: Any) -> None:
        try:
            super().setup_event(event)
        except Exception as exc:  # the runner skips the event's frames in its sink: so does the raw record
            frames = getattr(exc, "num_frames", 0) * self._cameras
            if frames and self._raw is not None:
                self._raw.skip(frames=frames)
                self.raw_skipped += frames
            raise

    def exec_event(self, event: Any) -> Iterable[Any]:
        """pymmcore-plus's frames for ``event``, each recorded raw then denoised; the runner's signals (cancel,
        pause) go on to pymmcore-plus's generator."""
        return self._denoised(super().exec_event(event))

    def _denoised(self, frames: Iterable[Any]) -> Iterator[Any]:
        gen: Any = iter(frames)
        is_generator = isinstance(gen, types.GeneratorType)
        signal: Any = None
        while True:
            try:
                payload = gen.send(signal) if is_generator and signal is not None else next(gen)
            except StopIteration:
                return
            if payload is None:  # a frame the camera did not deliver: the raw record skips it as the runner does
                if self._raw is not None:
                    self._raw.skip(frames=1)
                    self.raw_skipped += 1
                signal = yield None
                continue
            img, event, meta = payload
            meta = dict(meta)
            if "runner_time_ms" not in meta:  # what the runner would add after: the raw record needs it now
                meta["runner_time_ms"] = self.mmcore.mda.seconds_elapsed() * 1000
            if self._shape is not None and np.shape(img)[:2] != self._shape and self._beside_ok:
                self._keep_beside(type(payload)(img, event, meta))  # the writers would lose it: kept beside them
                if self._raw is not None:
                    self._raw.skip(frames=1)
                signal = yield None  # (the runner's own writer skips it too)
                continue
            raw_saved = self._record_raw(img, event, meta)  # first, whatever comes of the denoising
            payload = type(payload)(img, event, meta)
            try:
                out = self.denoise_payload(payload, raw_saved)
            except Exception as exc:  # a fault of ours must not abort the acquisition: the frame goes on raw
                log.exception("frame %s not denoised (written raw)", dict(event.index))
                meta["n2n"] = {"denoised": False, "error": f"{type(exc).__name__}: {exc}", "raw_saved": raw_saved}
                self.streams.setdefault("(error)", Counter()).update({"frames": 1, "error": 1})
                out = payload
            signal = yield out

    def denoise_payload(self, payload: Any, raw_saved: bool | None = None) -> Any:
        """One ``(image, event, meta)`` (its raw image recorded already: ``raw_saved``, None without a raw record):
        the denoised image, or the raw one marked, in a payload of the same kind, its ``meta["n2n"]`` saying which."""
        img, event, meta = payload
        meta = dict(meta)
        axes = event_axes(event)
        out, n2n = self.hook(img, {"Axes": axes})
        where = key_text(stream_key(axes))
        counts = self.streams.setdefault(where, Counter())
        counts["frames"] += 1
        denoised = bool(n2n.get("n2n-denoised"))
        if denoised:
            counts["denoised"] += 1
        else:
            counts[str(n2n.get("n2n-flag") or "error")] += 1
        info: dict[str, Any] = {"denoised": denoised, "stream": stream_key(axes)}
        for key in ("n2n-flag", "n2n-flags", "n2n-error", "n2n-latency-ms", "n2n-precision-fallback"):
            if key in n2n:
                info[key.removeprefix("n2n-")] = n2n[key]
        if raw_saved is not None:
            info["raw_saved"] = raw_saved
        meta["n2n"] = info
        return type(payload)(np.asarray(out).reshape(np.shape(img)).astype(img.dtype, copy=False), event, meta)

    @property
    def _beside_ok(self) -> bool:
        """Frames of another size can be kept beside the raw record (a path, not ome-writers' settings)."""
        return bool(self.raw_records) and isinstance(self._raw_target, str | Path)

    def _record_raw(self, img: np.ndarray, event: Any, meta: Any) -> bool | None:
        if self._raw is None:
            return None
        try:
            self._raw.append(img, event, meta)
        except Exception as exc:  # a full disk, a changed ROI: the acquisition goes on; said and counted
            self.raw_errors += 1
            if self.raw_errors <= 10 or self.raw_errors % 100 == 0:
                log.warning("raw frame %s not recorded in %s: %s: %s", dict(event.index), self._raw_target,
                            type(exc).__name__, exc)
            return False
        self.raw_saved += 1
        return True

    def _keep_beside(self, payload: Any) -> None:
        """A frame of another size than the acquisition's, denoised and kept with its raw pixels in the OME-TIFF of
        its size beside the raw record (opened, and said, at its first frame)."""
        img, event, meta = payload
        try:
            done = self.denoise_payload(payload)
            out, info = np.asarray(done[0]), dict(done[2]["n2n"])
        except Exception as exc:  # as in _denoised: the frame is kept raw
            log.exception("frame %s not denoised (kept raw)", dict(event.index))
            out, info = img, {"denoised": False, "error": f"{type(exc).__name__}: {exc}"}
            self.streams.setdefault("(error)", Counter()).update({"frames": 1, "error": 1})
        try:
            writer = self._beside.get(np.shape(img))
            if writer is None:
                record = Path(self.raw_records[-1])
                path = record.parent / f"{record.name.split('.')[0]}_{img.shape[1]}x{img.shape[0]}.ome.tif"
                writer = OmeTiffWriter(next_file(path) if path.exists() else path, img.shape[:2], img.dtype,
                                       channels=("raw", "denoised"), name="n2n acquire, another frame size",
                                       crash_safe=True)
                self._beside[np.shape(img)] = writer
                h, w = self._shape or (0, 0)
                log.warning("frames of %dx%d (the acquisition's are %dx%d: a camera setting of a position or a "
                            "channel changed the size) are kept, raw and denoised, in %s; the acquisition's files "
                            "skip them", img.shape[1], img.shape[0], w, h, writer.path)
            writer.write([img, out], {"Axes": event_axes(event), "n2n": info,
                                      "runner_time_ms": meta.get("runner_time_ms")})
        except (OSError, ValueError) as exc:  # a full disk: the acquisition goes on; said and counted
            self.raw_errors += 1
            log.warning("frame %s (%dx%d) not kept: %s", dict(event.index), img.shape[1], img.shape[0], exc)
            return
        self.other_sizes[str(writer.path)] += 1

    # --- after -------------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        """What became of the frames: the hook's counts, the raw record's, and per stream."""
        hook = {k: v for k, v in self.hook.counts().items() if not k.startswith("raw_")}  # (its keep_raw: unused)
        return {**hook, "raw_recorded": self.raw_saved, "raw_record_skipped": self.raw_skipped,
                "raw_record_errors": self.raw_errors, "other_sizes": dict(self.other_sizes),
                "streams": {k: dict(v) for k, v in self.streams.items()}}

    def _close_raw(self) -> None:
        if self._raw is not None:
            sink, self._raw = self._raw, None
            sink.close()
        for writer in self._beside.values():
            writer.close()
        self._beside.clear()

    def close(self) -> None:
        """Finish the raw record and close the server connection (after the acquisition)."""
        self._close_raw()
        self.hook.close()


def read_sequence(path: str | Path) -> Any:
    """A useq-schema ``MDASequence`` from a YAML or JSON file; ValueError naming the file and what is wrong."""
    import useq
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--mda {path}: no such file (expected a useq-schema MDASequence, YAML or JSON)")
    if path.stat().st_size > 1 << 20:
        raise ValueError(f"--mda {path}: expected an MDASequence file under 1 MiB, got {path.stat().st_size} bytes")
    try:
        sequence = useq.MDASequence.from_file(path)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise ValueError(f"--mda {path}: {where}: {first['msg']} (expected a useq-schema MDASequence)") from None
    except Exception as exc:  # unreadable YAML/JSON, an unknown suffix
        raise ValueError(f"--mda {path}: expected a useq-schema MDASequence (YAML or JSON), got "
                         f"{' '.join(str(exc).split())[:200]}") from None
    if not any(True for _ in sequence):
        raise ValueError(f"--mda {path}: the sequence has no events (expected time, channels, positions or z)")
    return sequence


@dataclass
class AcquisitionReport:
    """What an acquisition did: its frames, what became of each, and where they are."""

    frames_planned: int
    sizes: dict[str, int]
    raw: str
    denoised: str
    frames: int = 0
    denoised_frames: int = 0
    passed_raw: int = 0
    raw_recorded: int = 0
    raw_record_errors: int = 0
    other_sizes: dict[str, int] = field(default_factory=dict)
    """Frames of another size than the acquisition's (a camera setting of a position or a channel), kept raw and
    denoised beside the raw record, by file: not in ``raw`` nor ``denoised``."""
    seconds: float = 0.0
    stopped: bool = False
    reasons: dict[str, int] = field(default_factory=dict)
    """Why frames were written raw (a server flag such as ``raw:no_model``, or ``error``), with their count."""
    streams: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def acquire(core: Any, sequence: Any, endpoints: dict[str, str] | str | None, out_dir: str | Path, *,
            fmt: str = "ome-zarr", overwrite: bool = False, timeout_s: float = 10.0,
            on_frame: Callable[[dict[str, Any]], None] | None = None,
            stop: threading.Event | None = None) -> AcquisitionReport:
    """Run ``sequence`` on ``core`` (pymmcore-plus) with a :class:`DenoisingEngine` on the server at ``endpoints``:
    ``out_dir/raw.ome.zarr`` (every frame as acquired) and ``out_dir/denoised.ome.zarr`` (``fmt``: or
    ``.ome.tif``). An existing acquisition there is refused (FileExistsError) unless ``overwrite``. ``on_frame``
    gets each frame's ``n2n`` metadata (for a progress bar); ``stop`` cancels the run between events (the frames
    acquired so far are kept, both files closed). The core's own engine is given back after."""
    suffix = FORMATS.get(fmt)
    if suffix is None:
        raise ValueError(f"expected a format among {', '.join(FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    raw, denoised = out_dir / f"raw{suffix}", out_dir / f"denoised{suffix}"
    existing = [p for p in (raw, denoised) if is_taken(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists: expected a new folder for the acquisition (--out), or "
                              "--overwrite to write over it")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = AcquisitionReport(frames_planned=sum(1 for _ in sequence), sizes=dict(sequence.sizes), raw=str(raw),
                               denoised=str(denoised))
    engine = DenoisingEngine(core, endpoints, raw=raw, overwrite=overwrite, timeout_s=timeout_s)
    previous = core.mda.set_engine(engine)

    def on_ready(_img: Any, _event: Any, meta: Any) -> None:
        if on_frame is not None:
            on_frame(dict(meta.get("n2n") or {}))

    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            if stop is not None and stop.is_set():
                report.stopped = True
                core.mda.cancel()
                return

    watcher = threading.Thread(target=watch, name="n2n-acquire-watch", daemon=True)
    core.mda.events.frameReady.connect(on_ready)
    t0 = time.perf_counter()
    watcher.start()
    try:
        core.mda.run(sequence, output=str(denoised), overwrite=overwrite,
                     dimension_overrides=storage_overrides(sequence))
    finally:
        done.set()
        watcher.join(5)
        core.mda.events.frameReady.disconnect(on_ready)
        engine.close()
        if previous is not None:
            core.mda.set_engine(previous)
    report.seconds = time.perf_counter() - t0
    report.raw, report.denoised = str(written_path(raw)), str(written_path(denoised))
    counts = engine.counts()
    report.frames = sum(stream["frames"] for stream in counts["streams"].values())
    report.denoised_frames = sum(stream.get("denoised", 0) for stream in counts["streams"].values())
    report.passed_raw = report.frames - report.denoised_frames
    report.raw_recorded = counts["raw_recorded"]
    report.raw_record_errors = counts["raw_record_errors"]
    report.other_sizes = counts["other_sizes"]
    report.streams = counts["streams"]
    reasons: Counter[str] = Counter()
    for stream in report.streams.values():
        reasons.update({k: v for k, v in stream.items() if k not in ("frames", "denoised")})
    report.reasons = dict(reasons)
    return report
