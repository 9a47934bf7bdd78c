"""The task of ``n2n denoise``: the same code in this process and on every Dask worker. Each process keeps
the open input, output and compiled Denoisers of the job it last ran (one engine per model of the job: with a model
per channel, each channel's planes go through its own)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import open_dataset
from ..datasets.base import Reader, read_available
from .store import store_job

__all__ = ["Job", "JobModel", "TaskResult", "denoiser_key", "keep", "make_denoiser", "peak_mib", "release",
           "run_task", "warm_up"]


@dataclass(frozen=True)
class JobModel:
    """One model of a job: its folder (or zoo package), its card's sha256, and the engine and precision decided for
    it at the start (recorded: a resumed run and every worker use the same)."""

    path: str
    sha256: str
    engine: str
    precision: str


@dataclass(frozen=True)
class Job:
    """What a worker needs to run a task (sent to Dask workers, so plain values only)."""

    input: str
    kind: str
    models: tuple[JobModel, ...]
    """Every model the job runs, each once however many channels it serves."""
    routes: tuple[int | None, ...]
    """Per channel (index along C; one entry for a dataset without a C axis): the index in ``models`` of the model
    that denoises its planes, or None: the channel has no model in the set and its planes are copied as they are
    (raw, never denoised with another channel's model)."""
    store: str
    device: str
    threads: int | None
    output_dtype: str
    channel: int | None
    """The channel (index along C) denoised; the others are copied. None: every plane is denoised."""
    id: str
    """The store's job id (a new one when a store is replaced): what a worker opened for another job is not
    reused."""
    trust_code: bool = False
    """Run a TorchScript file this install did not write (--trust-code)."""
    averaged: int = 1
    """Each plane is the mean of this many camera readouts (--averaged)."""
    copy: tuple[tuple[int, int], ...] = ()
    """Planes (``[START, STOP)`` ranges) of the denoised channel copied as they are: the input marks them denoised
    already (``--skip-denoised``)."""


_CACHE: dict[tuple[Any, ...], Any] = {}
"""Per process: the open input, the compiled Denoiser and the open output of the job last run here."""


_CACHE_LOCK = threading.Lock()
"""The threads of one Dask worker open the job's input and output once, not once each."""


def _cached(key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    with _CACHE_LOCK:
        if key not in _CACHE:
            keep(key, make())
        return _CACHE[key]


def _close(value: Any) -> None:
    if hasattr(value, "close"):
        value.close()
    elif hasattr(getattr(value, "engine", None), "close"):
        value.engine.close()


def release() -> None:
    """Close what this process holds open for the last job (its input, output and engine)."""
    while _CACHE:
        _close(_CACHE.popitem()[1])


def keep(key: tuple[Any, ...], value: Any) -> None:
    """Cache ``value``; one of each kind (key[0]) at a time: a new job's releases the last job's."""
    for old in [k for k in _CACHE if k[0] == key[0] and k != key]:
        _close(_CACHE.pop(old))
    _CACHE[key] = value


def make_denoiser(model: str, engine: str, precision: str, device: str, threads: int | None,
                   output_dtype: str, retime: bool = False, trust_code: bool = False, averaged: int = 1) -> Any:
    from ..denoiser import Denoiser

    return Denoiser.from_model_dir(model, engine, precision, device, threads, output_dtype=output_dtype,
                                   retime=retime, trust_code=trust_code, averaged=averaged)


def denoiser_key(index: int, model: str, engine: str, precision: str, device: str, threads: int | None,
                 output_dtype: str, sha256: str, averaged: int = 1) -> tuple[Any, ...]:
    """The cache key of a job's ``index``-th model's Denoiser: one per model slot is kept (a new job's replaces the
    last job's)."""
    return (f"denoiser:{index}", model, engine, precision, device, threads, output_dtype, sha256, averaged)


def _denoiser(job: Job, index: int) -> Any:
    """The compiled Denoiser of the job's ``index``-th model (made once per process)."""
    m = job.models[index]
    key = denoiser_key(index, m.path, m.engine, m.precision, job.device, job.threads, job.output_dtype, m.sha256,
                       job.averaged)
    with _CACHE_LOCK:  # slots a job with more models left behind
        for old in [k for k in _CACHE if str(k[0]).startswith("denoiser:") and int(k[0][9:]) >= len(job.models)]:
            _close(_CACHE.pop(old))
    return _cached(key, lambda: make_denoiser(m.path, m.engine, m.precision, job.device, job.threads,
                                              job.output_dtype, trust_code=job.trust_code,
                                              averaged=job.averaged))


def _route(job: Job, info: Any, plane: int) -> int | None:
    """The index in ``job.models`` of the model that denoises ``plane`` (None: its channel has no model)."""
    return job.routes[info.index(plane)["C"] if "C" in info.axes else 0]


def _open(job: Job) -> tuple[Reader, Any]:
    """This process's input (planes only: a worker needs no per-plane metadata) and output for the job."""
    from ..datasets.omezarr import OmeZarrWriter

    reader = _cached(("reader", job.input, job.kind, job.id), lambda: open_dataset(job.input, job.kind, False))
    writer = _cached(("writer", job.store, job.id), lambda: OmeZarrWriter.open(job.store, job.threads))
    return reader, writer


_ENGINE_LOCK = threading.Lock()
"""One engine per process: tasks running in several threads of one Dask worker take turns with it."""


def warm_up(job: Job, firsts: tuple[int, ...]) -> None:
    """Open the input and output and compile each model's engine on the first plane it denoises (``firsts``), before
    the clock starts (run on every Dask worker as it joins, so that planes/s measures work, not start-up)."""
    reader, _ = _open(job)
    for plane in firsts:
        index = _route(job, reader.info, plane)
        if index is None:
            continue
        planes, bad = read_available(reader, plane, plane + 1)
        with _ENGINE_LOCK:
            if bad:  # an unreadable plane (said by the task that meets it): the engine compiles on zeros
                _denoiser(job, index)(np.zeros_like(planes[0]))
            else:
                _denoiser(job, index)(planes[0])


def _job_id(store: str) -> str | None:
    record = store_job(Path(store))
    return None if record is None else record.get("id")


def _previous_planes(reader: Reader, planes: np.ndarray, start: int, plane: int, k: int,
                     bad: dict[int, str] | None = None) -> list[np.ndarray]:
    """A K-frame model's history of a plane, by the server's rule (streamer/core/history.py): the planes before it
    along T at the same C and Z (oldest first, at most K−1; fewer at the start of the time series, none without
    a T axis: Z neighbours are not the same signal), and none when the plane moved against the oldest of them.
    Planes outside this task's range are read (a task needs nothing from another). A plane that cannot be read
    (``bad``, or failing here) ends the history: only the planes after it count, as after a gap in a stream."""
    from ..core.history import causal_previous

    info = reader.info
    if k == 1 or "T" not in info.axes:
        return []
    stride = info.planes // info.shape[0]  # T is the first axis: one step along it skips the other axes' planes
    t = plane // stride
    previous: list[np.ndarray] = []
    for j in range(min(k - 1, t), 0, -1):
        idx = plane - j * stride
        if idx >= start:
            if bad and idx in bad:
                previous = []
                continue
            previous.append(planes[idx - start])
            continue
        got, missing = read_available(reader, idx, idx + 1)
        if missing:
            previous = []
        else:
            previous.append(got[0])
    return causal_previous(planes[plane - start], previous)


TaskResult = tuple[int, int, int, float, list[tuple[int, tuple[str, ...]]], list[tuple[int, str]]]
"""(start, stop, planes denoised, seconds, the planes the Denoiser's checks flagged: (plane, its flags), the planes
that could not be read from the input: (plane, why))."""


def run_task(job: Job, start: int, stop: int) -> TaskResult:
    """Denoise planes ``start:stop`` of the job's input into its store. Returns (start, stop, planes
    denoised, seconds, flagged planes, unreadable planes): a plane flagged ``raw:…`` was written RAW (its denoised
    output failed the Denoiser's checks), one flagged ``float_path`` was denoised by the float32 model (see
    :mod:`streamer.denoiser`). A plane the input cannot give (a file cut short, a damaged page or chunk) is not
    written (nothing is invented in its place) and is returned with why. Each plane goes through the model of its
    channel (``job.routes``); a K-frame model sees each plane's previous planes along T (:func:`_previous_planes`),
    with its own K. A plane of ``job.copy`` is copied as it is, as are the other channels' with ``job.channel`` and
    the planes of a channel without a model."""
    from ..core.dtypes import to_dtype

    t0 = time.perf_counter()
    reader, writer = _open(job)
    info = reader.info
    planes, bad = read_available(reader, start, stop)
    out_dtype = np.dtype(np.float32) if job.output_dtype == "float32" else info.dtype
    out = np.empty((len(planes), *info.plane_shape), out_dtype)
    denoised = 0
    flagged: list[tuple[int, tuple[str, ...]]] = []
    copied = {p for a, b in job.copy for p in range(max(a, start), min(b, stop))}
    for i, plane in enumerate(planes):
        if start + i in bad:
            continue
        index = _route(job, info, start + i)
        if (index is not None and (job.channel is None or info.index(start + i)["C"] == job.channel)
                and start + i not in copied):
            model = job.models[index]
            with _ENGINE_LOCK:
                denoiser = _denoiser(job, index)
                out[i] = denoiser(plane, previous=_previous_planes(reader, planes, start, start + i,
                                                                   denoiser.input_frames, bad))
                last = getattr(denoiser, "last_flags", None)
                flags = tuple(last[0]) if isinstance(last, list | tuple) and len(last) == 1 else ()
            if flags:
                flagged.append((start + i, flags))
            if denoiser.engine.precision != model.precision or denoiser.engine.name != model.engine:
                raise RuntimeError(f"expected the job's engine {model.engine} at {model.precision} for {model.path}, "
                                   f"but this worker's engine runs {denoiser.engine.name} at "
                                   f"{denoiser.engine.precision} ({denoiser.engine.precision_note}); its pixels "
                                   "would differ")
            denoised += 1
        else:
            out[i] = to_dtype(np.asarray(plane, np.float32), out_dtype) if plane.dtype != out_dtype else plane
    if _job_id(job.store) != job.id:  # the store was replaced since (a rerun with --overwrite): keep out of it
        raise RuntimeError(f"{job.store} now belongs to another run; planes {start}:{stop} of this one were "
                           "not written")
    if not bad:
        writer.write(start, out)
    else:  # the runs of planes that were read; the others stay unwritten (the fill value, listed as missing)
        good = [p for p in range(start, start + len(out)) if p not in bad]
        runs: list[list[int]] = []
        for p in good:
            if runs and runs[-1][-1] == p - 1:
                runs[-1].append(p)
            else:
                runs.append([p])
        for run in runs:
            writer.write(run[0], out[run[0] - start : run[-1] + 1 - start])
    return start, stop, denoised, time.perf_counter() - t0, flagged, sorted(bad.items())


def peak_mib() -> float:
    """This process's peak resident memory so far, in MiB: ``VmHWM`` where there is a /proc (``ru_maxrss``
    would count a spawned worker's parent too: Linux carries it over an exec)."""
    import resource
    import sys

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 2**10, 1)
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
