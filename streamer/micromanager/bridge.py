"""``n2n bridge``: Micro-Manager live frames → the denoising server → OME-TIFF and viewers.

One thread takes frames from Micro-Manager and pushes them to the server's input; the calling thread receives the
denoised frames from the server's output (where any other viewer may subscribe too) and writes raw and denoised side
by side (channels ``raw``, ``denoised``) into one OME-TIFF. The raw record is complete whatever the mode: a frame
the server dropped (live mode), refused, or had not sent back when the bridge stopped is written too, its raw pixels
in both channels, ``n2n-denoised: false`` and ``n2n-raw-only`` saying why. Counts: frames seen (taken from Micro-
Manager), denoised (came back denoised), kept raw (came back, but the server sent the raw frame: the denoised one
failed its checks), dropped (by the server in live mode, or overwritten in Micro-Manager's buffer before they were
read). Each plane's metadata in the OME-TIFF says ``n2n-denoised`` (false for a frame the server kept raw: its
``denoised`` channel holds the raw pixels) and, when the server flagged it, ``n2n-flags`` (see
:mod:`streamer.protocol`). An OME-TIFF holds one frame size: the frames of a new ROI (or binning) go to a file of their
size beside it (``bridge_2.ome.tif``, …; one per size, :class:`~streamer.sources.OmeTiffParts`), said in one line and
listed in the report's ``files``.

A core with a ``Channel`` configuration group sends each frame's channel (the group's current configuration, read
as the frame is sent) as ``meta.channel``: a server of a model set (``n2n serve --model DAPI=runs/dapi --model
GFP=runs/gfp``) denoises it with that channel's model, and a channel it has no model for comes back raw (kept raw,
flagged ``raw:no_model``). A core without the group sends none (the set's default model serves).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..client import ServerError, StreamClient
from ..core.dtypes import to_dtype
from ..denoiser import FLAG_FLOAT_PATH, is_raw
from ..sources import EndOfStream, OmeTiffParts
from ..sources.micromanager import MicroManagerSource

__all__ = ["CHANNEL_GROUP", "BridgeReport", "FrameChannels", "channel_group", "current_channel", "run_bridge"]

log = logging.getLogger("n2n.micromanager")

CHANNEL_GROUP = "Channel"
"""Micro-Manager's configuration group whose current configuration names the channel being imaged, where the core
names no channel group of its own (``getChannelGroup``)."""


def channel_group(core: Any) -> str:
    """The core's channel group (``Core-ChannelGroup``), else :data:`CHANNEL_GROUP`."""
    get = getattr(core, "get_channel_group", None) or getattr(core, "getChannelGroup", None)
    try:
        name = get() if get is not None else None
    except Exception:  # a core that cannot say
        name = None
    return str(name) if name else CHANNEL_GROUP


def current_channel(core: Any, group: str | None = None) -> str | None:
    """The core's current configuration of its channel ``group`` (``"GFP"``; None: :func:`channel_group`); None for
    a core without the group, with no current configuration (the state matches none), or one that cannot say.
    Raises nothing."""
    get = getattr(core, "get_current_config", None) or getattr(core, "getCurrentConfig", None)
    if get is None:
        return None
    try:
        name = get(group or channel_group(core))
    except Exception:  # a core (the Java bridge's) that refuses an undefined group
        return None
    if name is None:
        return None
    return str(name)[:128] or None


class FrameChannels:
    """The channel of each frame as it is sent (:func:`current_channel`), for a core with a channel group; for a
    core without one (or whose core cannot say whether it has one), nothing is asked per frame. The channel is the
    one set when the frame is sent: frames still in Micro-Manager's buffer at a channel switch are named after the
    new one (a live view switching channels; an MDA's frames carry their own, see :mod:`.mda`). The bridge and the
    napari widget name their frames with it."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.group = channel_group(core)
        defined = getattr(core, "is_group_defined", None) or getattr(core, "isGroupDefined", None)
        try:
            self.enabled = bool(defined(self.group)) if defined is not None else False
        except Exception:
            self.enabled = False
        if self.enabled:
            log.info("frames are sent with their channel (the core's %r configuration)", self.group)

    def now(self) -> str | None:
        return current_channel(self._core, self.group) if self.enabled else None


@dataclass
class BridgeReport:
    frames_seen: int = 0
    frames_denoised: int = 0
    frames_kept_raw: int = 0
    """Came back from the server raw, not denoised: the denoised frame failed the server's checks."""
    frames_float_path: int = 0
    """Came back denoised by the float32 model (out of the reduced precision's checked range)."""
    frames_dropped: int = 0
    frames_failed: int = 0
    frames_unaccounted: int = 0
    missed_in_micromanager: int = 0
    planes_written: int = 0
    """Planes in the OME-TIFF(s): every camera frame the bridge read, denoised or not (``n2n-denoised`` says which)."""
    files: list[str] = field(default_factory=list)
    """The OME-TIFFs written, in order: ``out``, then one more at each change of frame size (a new ROI, binning)."""
    seconds: float = 0.0
    fps_in: float = 0.0
    fps_out: float = 0.0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    out: str | None = None
    mode: str = ""
    engine: str = ""
    interrupted: bool = False
    latencies_ms: list[float] = field(default_factory=list)
    """Per denoised frame, in arrival order: captured (Micro-Manager's elapsed time) → denoised frame back."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "latencies_ms"}


#: frames the producer's socket may hold before its send blocks: with the server's own small queue,
#: a lossless server's backpressure reaches the camera loop after a handful of frames (not 1000)
SEND_HWM = 4


class _Producer(threading.Thread):
    """Micro-Manager → server input, until ``frames`` were sent or stopped."""

    def __init__(self, source: MicroManagerSource, endpoints: dict[str, str], frames: int | None,
                 pending: deque[tuple[int, np.ndarray, dict[str, Any]]] | None, lock: threading.Lock,
                 timeout_s: float) -> None:
        super().__init__(name="n2n-bridge-producer", daemon=True)
        self.source, self.endpoints, self.frames = source, endpoints, frames
        self.pending, self.lock = pending, lock
        self.timeout_s = timeout_s
        self.sent = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.release = threading.Event()  # the socket stays open (frames may still be queued in it) until set
        self.done = threading.Event()  # no more frames will be sent
        self.started_at = 0.0
        self.finished_at = 0.0

    def run(self) -> None:
        try:
            with StreamClient(self.endpoints, timeout=self.timeout_s, send_hwm=SEND_HWM) as client:
                channels = FrameChannels(getattr(self.source, "core", None))
                self.started_at = time.perf_counter()
                while not self.stop.is_set() and (self.frames is None or self.sent < self.frames):
                    try:
                        frame = self.source.read()
                    except EndOfStream:
                        break
                    keys = ("ImageNumber", "ElapsedTime-ms", "Exposure-ms", "SimulatorFrame")
                    meta: dict[str, Any] = {k: frame.metadata[k] for k in keys if k in frame.metadata}
                    if getattr(self.source, "simulated", False):
                        meta["n2n-simulated"] = True  # synthetic cells: said in every plane of the record
                    channel = channels.now()
                    if channel is not None:  # routes it to its channel's model (and keeps its history apart)
                        meta["channel"] = channel
                    if self.pending is not None:  # before sending: the denoised frame may come back at once
                        with self.lock:
                            self.pending.append((self.sent, frame.pixels, meta))
                    if not self._send(client, frame.pixels, frame.timestamp_ns, meta):
                        break  # stopped first: the frame stays pending, and the raw record keeps it (not_sent)
                    self.sent += 1
                self.finished_at = time.perf_counter()
                self.done.set()
                # frames may still sit in this socket's queue (a lossless server takes them as it
                # goes): closing now (linger 0) would discard them
                self.release.wait()
        except BaseException as exc:  # reported by the caller
            self.error = exc
        finally:
            self.finished_at = self.finished_at or time.perf_counter()
            self.done.set()

    def _send(self, client: StreamClient, pixels: np.ndarray, ts_ns: int, meta: dict[str, Any]) -> bool:
        """Send, waiting for room as long as needed (lossless backpressure); False if stopped first."""
        while True:
            try:
                client.send(pixels, seq=self.sent, ts_ns=ts_ns, meta=meta, timeout=0.5)
                return True
            except TimeoutError:
                if self.stop.is_set():
                    return False


def _write_raw_only(writer: OmeTiffParts, item: tuple[int, np.ndarray, dict[str, Any]],
                    refused: dict[int, str], sent: int | None = None) -> None:
    """A camera frame the server did not send back denoised (dropped in live mode, refused, still out when the
    bridge stopped, or read but not sent before a stop): its raw pixels in both channels, ``n2n-denoised: false``
    and why (``n2n-raw-only``: ``not_returned``, ``refused:KIND`` or ``not_sent``)."""
    seq, raw, meta = item
    why = (f"refused:{refused.pop(seq)}" if seq in refused else
           "not_sent" if sent is not None and seq >= sent else "not_returned")
    writer.write([raw, raw], {**meta, "seq": seq, "n2n-denoised": False, "n2n-raw-only": why})


def run_bridge(source: MicroManagerSource, endpoints: dict[str, str], frames: int | None = None,
               out: str | Path | None = None, timeout_s: float = 10.0, stop: threading.Event | None = None,
               progress: Callable[[BridgeReport], None] | None = None) -> BridgeReport:
    """Bridge ``frames`` frames (None: until ``stop`` is set) from ``source`` through the server at
    ``endpoints``; write raw + denoised to ``out``. Returns the counts.

    Every frame sent is accounted for: denoised, dropped by a live server, refused by the server
    (``frames_failed``, with its error logged), or, when the server stops answering or a stop
    leaves no time to wait, ``frames_unaccounted``. After ``stop`` the frames already sent get at
    most ``timeout_s`` to come back."""
    stop = stop or threading.Event()
    report = BridgeReport(out=str(out) if out else None)
    pending: deque[tuple[int, np.ndarray, dict[str, Any]]] | None = deque() if out else None
    lock = threading.Lock()
    latencies: list[float] = []
    t0 = time.perf_counter()
    producer: _Producer | None = None
    last_received = 0.0
    base_drops = 0
    refused: dict[int, str] = {}  # seq → the server's error kind, for the raw record
    with StreamClient(endpoints, timeout=timeout_s, errors=True) as client, contextlib.ExitStack() as files:
        client.wait_subscribed()
        status = client.status()
        report.mode, report.engine = status["mode"], status["engine"]
        base_drops = status["drops"]
        writer = files.enter_context(OmeTiffParts(out, source.dtype, channels=("raw", "denoised"), name="n2n bridge",
                                                  what="the bridge's record")) if out else None
        producer = _Producer(source, endpoints, frames, pending, lock, timeout_s)
        producer.start()
        last_progress = 0.0
        idle_since: float | None = None
        drain_deadline: float | None = None
        try:
            while True:
                if stop.is_set() and drain_deadline is None:
                    producer.stop.set()
                    report.interrupted = True
                    drain_deadline = time.monotonic() + timeout_s
                if drain_deadline is not None and time.monotonic() > drain_deadline:
                    log.warning("stopped: gave up waiting for frames still in the server after %g s", timeout_s)
                    break
                done_sending = producer.done.is_set()
                try:
                    result = client.receive(timeout=0.1)
                except TimeoutError:
                    if done_sending:
                        # all sent: finished once the server has accounted for every frame
                        dropped = client.status()["drops"] - base_drops
                        if report.frames_denoised + report.frames_kept_raw + report.frames_failed + dropped \
                                >= producer.sent:
                            break
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > timeout_s:
                            log.warning("the server still holds frames after %g s; stopping", timeout_s)
                            break
                    continue
                except ServerError as exc:  # the server refused a frame we sent
                    report.frames_failed += 1
                    if isinstance(exc.header.get("seq"), int):
                        refused[exc.header["seq"]] = str(exc.header.get("kind") or "refused")
                    log.warning("the server refused frame %s: %s", exc.header.get("seq"), exc)
                    continue
                idle_since = None
                last_received = time.perf_counter()
                seq = result.seq if result.seq is not None else -1
                got = result.header.get("flags")
                flags = [str(f) for f in got] if isinstance(got, list) else []
                raw_back = is_raw(flags)
                report.frames_kept_raw += raw_back
                report.frames_denoised += not raw_back
                report.frames_float_path += FLAG_FLOAT_PATH in flags
                stages = result.header.get("stages", {})
                ts = result.header.get("ts_ns")
                if isinstance(ts, int) and "sent" in stages:
                    latencies.append((time.time_ns() - ts) / 1e6)
                if writer is not None and pending is not None:
                    raw = None
                    with lock:
                        missed = []
                        while pending and pending[0][0] < seq:  # dropped by a live server, or refused
                            missed.append(pending.popleft())
                        if pending and pending[0][0] == seq:
                            raw = pending.popleft()[1]
                    for item in missed:  # the raw record keeps every camera frame, marked not denoised
                        _write_raw_only(writer, item, refused)
                    if raw is not None:
                        plane_meta = {**result.header.get("meta", {}), "seq": seq, "n2n-denoised": not raw_back}
                        if flags:
                            plane_meta["n2n-flags"] = flags
                        writer.write([raw, to_dtype(result.pixels, source.dtype)], plane_meta)
                now = time.perf_counter()
                if progress is not None and now - last_progress > 0.25:
                    last_progress = now
                    report.frames_seen = producer.sent
                    progress(report)
        finally:
            producer.stop.set()
            producer.release.set()
            producer.join(timeout=timeout_s + 5)
            if writer is not None and pending is not None:  # sent, never came back (dropped at the end, or
                with lock:                                  # still in the server when we stopped): kept raw
                    rest = list(pending)
                    pending.clear()
                for item in rest:
                    _write_raw_only(writer, item, refused, producer.sent)
            try:
                report.frames_dropped = client.status(timeout=2)["drops"] - base_drops
            except TimeoutError:
                pass
        report.planes_written = len(writer) if writer is not None else 0
    report.files = [str(p) for p in writer.paths] if writer is not None else []  # after close: no empty last part
    if producer.error is not None and not isinstance(producer.error, EndOfStream):
        raise producer.error
    report.frames_seen = producer.sent
    report.frames_unaccounted = max(0, producer.sent - report.frames_denoised - report.frames_kept_raw
                                    - report.frames_failed - report.frames_dropped)
    report.missed_in_micromanager = source.missed
    report.seconds = round(time.perf_counter() - t0, 3)
    span = (producer.finished_at - producer.started_at) if producer.finished_at else 0.0
    report.fps_in = round(producer.sent / span, 2) if span > 0 else 0.0
    back = report.frames_denoised + report.frames_kept_raw
    if back > 1 and last_received > producer.started_at:
        report.fps_out = round(back / (last_received - producer.started_at), 2)
    if latencies:
        report.latencies_ms = [round(v, 3) for v in latencies]
        report.latency_ms_p50 = round(float(np.percentile(latencies, 50)), 2)
        report.latency_ms_p95 = round(float(np.percentile(latencies, 95)), 2)
        report.latency_ms_p99 = round(float(np.percentile(latencies, 99)), 2)
    return report
