"""``n2n denoise``: a recorded dataset through the serving Denoiser, resumable, in this process or on Dask.

One path for every case: the planes still to do are cut into tasks of a few planes (memory per worker is
bounded by a task, never by the dataset); a task reads its planes, denoises them with the same
:class:`~streamer.pipeline.Denoiser` as ``n2n serve`` (one normalisation, one dtype conversion), and
writes them into an OME-Zarr store, one chunk per plane. Tasks run here one after another (one worker)
or on a Dask cluster (``--workers N``: a LocalCluster; ``--scheduler``: an existing one), each worker
process holding its own compiled engine. Only this process records progress: once a task's planes are
written, its range is appended to the store's progress log, so a rerun after a kill redoes nothing
that was finished and nothing that was not.

The engine and precision are decided once, at the start (``auto`` times the precisions on this machine),
and recorded in the store: a resumed run and every worker use the same, so their pixels are the same
bits. The output is the store itself (``.zarr``), or for OME-TIFF a temporary ``OUTPUT.partial.zarr``
beside it, written into the TIFF (under a temporary name, then renamed) once every plane is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .config import DenoiseConfig
from .datasets import DatasetError, DatasetInfo, open_dataset, output_kind
from .datasets.base import Reader

__all__ = ["PROGRESS_NAME", "DenoiseInterrupted", "Job", "denoise", "run_task"]

log = logging.getLogger("n2n.streamer")

PROGRESS_NAME = "n2n-progress.log"
"""In the store: one line ``START STOP`` per finished task (plane ranges, flat indices)."""
MAX_TASK_PLANES = 16


class DenoiseInterrupted(KeyboardInterrupt):
    """Ctrl-C: what was finished is kept; the message says how to continue."""


@dataclass(frozen=True)
class Job:
    """What a worker needs to run a task (sent to Dask workers, so plain values only)."""

    input: str
    kind: str
    model: str
    store: str
    engine: str
    precision: str
    device: str
    threads: int | None
    output_dtype: str
    channel: int | None
    """The channel (index along C) denoised; the others are copied. None: every plane is denoised."""
    id: str
    """The store's job id (a new one when a store is replaced): what a worker opened for another job is not
    reused."""
    model_sha256: str


# --- the task: the same code in this process and on every Dask worker -----------------------------------

_CACHE: dict[tuple[Any, ...], Any] = {}
"""Per process: the open input, the compiled Denoiser and the open output of the job last run here."""


def _cached(key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _keep(key, make())
    return _CACHE[key]


def _close(value: Any) -> None:
    if hasattr(value, "close"):
        value.close()
    elif hasattr(getattr(value, "engine", None), "close"):
        value.engine.close()


def _release() -> None:
    """Close what this process holds open for the last job (its input, output and engine)."""
    while _CACHE:
        _close(_CACHE.popitem()[1])


def _keep(key: tuple[Any, ...], value: Any) -> None:
    """Cache ``value``; one of each kind (key[0]) at a time: a new job's releases the last job's."""
    for old in [k for k in _CACHE if k[0] == key[0] and k != key]:
        _close(_CACHE.pop(old))
    _CACHE[key] = value


def _make_denoiser(model: str, engine: str, precision: str, device: str, threads: int | None,
                   output_dtype: str) -> Any:
    from .engines import create_engine
    from .model import ModelCard
    from .pipeline import Denoiser

    card = ModelCard.load(model)
    return Denoiser(card, create_engine(engine, card, precision=precision, device=device, num_threads=threads),
                    output_dtype=output_dtype)


def _denoiser(job: Job) -> Any:
    key = ("denoiser", job.model, job.engine, job.precision, job.device, job.threads, job.output_dtype,
           job.model_sha256)
    return _cached(key, lambda: _make_denoiser(*key[1:-1]))


def _open(job: Job) -> tuple[Reader, Any]:
    """This process's input (planes only: a worker needs no per-plane metadata) and output for the job."""
    from .datasets.omezarr import OmeZarrWriter

    reader = _cached(("reader", job.input, job.kind, job.id), lambda: open_dataset(job.input, job.kind, False))
    writer = _cached(("writer", job.store, job.id), lambda: OmeZarrWriter.open(job.store, job.threads))
    return reader, writer


_ENGINE_LOCK = threading.Lock()
"""One engine per process: tasks running in several threads of one Dask worker take turns with it."""


def warm_up(job: Job, plane: int | None) -> None:
    """Open the input and output and compile the engine on one plane, before the clock starts (run on
    every Dask worker as it joins, so that planes/s measures work, not start-up)."""
    reader, _ = _open(job)
    if plane is not None:
        with _ENGINE_LOCK:
            _denoiser(job)(reader.read(plane, plane + 1)[0])


def _job_id(store: str) -> str | None:
    record = _store_job(Path(store))
    return None if record is None else record.get("id")


def run_task(job: Job, start: int, stop: int) -> tuple[int, int, int, float]:
    """Denoise planes ``start:stop`` of the job's input into its store. Returns (start, stop, planes
    denoised, seconds)."""
    from .pipeline import to_dtype

    t0 = time.perf_counter()
    reader, writer = _open(job)
    info = reader.info
    planes = reader.read(start, stop)
    out_dtype = np.dtype(np.float32) if job.output_dtype == "float32" else info.dtype
    out = np.empty((len(planes), *info.plane_shape), out_dtype)
    denoised = 0
    for i, plane in enumerate(planes):
        if job.channel is None or info.index(start + i)["C"] == job.channel:
            with _ENGINE_LOCK:
                denoiser = _denoiser(job)
                out[i] = denoiser(plane)
            if denoiser.engine.precision != job.precision or denoiser.engine.name != job.engine:
                raise RuntimeError(f"expected the job's engine {job.engine} at {job.precision}, but this worker's "
                                   f"engine runs {denoiser.engine.name} at {denoiser.engine.precision} "
                                   f"({denoiser.engine.precision_note}); its pixels would differ")
            denoised += 1
        else:
            out[i] = to_dtype(np.asarray(plane, np.float32), out_dtype) if plane.dtype != out_dtype else plane
    if _job_id(job.store) != job.id:  # the store was replaced since (a rerun with --overwrite): keep out of it
        raise RuntimeError(f"{job.store} now belongs to another run; planes {start}:{stop} of this one were "
                           "not written")
    writer.write(start, out)
    return start, stop, denoised, time.perf_counter() - t0


# --- the store: settings, progress, completion ---------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store_job(store: Path) -> dict[str, Any] | None:
    """The job record of an n2n store (None: no store there, or not one of ours)."""
    meta = store / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    ours = attrs.get("n2n-live") if isinstance(attrs, dict) else None
    job = ours.get("job") if isinstance(ours, dict) else None
    return job if isinstance(job, dict) else None


def _set_complete(store: Path) -> None:
    import zarr

    group = zarr.open_group(store, mode="r+")
    ours: dict[str, Any] = dict(group.attrs.get("n2n-live", {}))  # type: ignore[arg-type]
    ours["job"] = {**ours.get("job", {}), "complete": True,
                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    group.attrs["n2n-live"] = ours


def _done_ranges(store: Path) -> list[tuple[int, int]]:
    """Finished plane ranges from the progress log (a line cut short by a kill is ignored)."""
    path = store / PROGRESS_NAME
    if not path.is_file():
        return []
    ranges = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            ranges.append((int(parts[0]), int(parts[1])))
    return ranges


def _todo(planes: int, done: list[tuple[int, int]]) -> list[int]:
    finished = np.zeros(planes, bool)
    for a, b in done:
        finished[a:b] = True
    return [int(p) for p in np.flatnonzero(~finished)]


def _tasks(todo: list[int], size: int, workers: int = 1) -> list[tuple[int, int]]:
    """Contiguous runs of the planes to do, cut into ranges of at most ``size`` planes. With several workers
    the size is lowered so that the ranges come out about equal and about a multiple of the workers in
    number (a gap in the planes to do, or the last range, can still be shorter)."""
    if workers > 1 and todo:
        count = math.ceil(len(todo) / size)
        size = math.ceil(len(todo) / (math.ceil(count / workers) * workers))
    tasks: list[tuple[int, int]] = []
    for p in todo:
        if tasks and tasks[-1][1] == p and tasks[-1][1] - tasks[-1][0] < size:
            tasks[-1] = (tasks[-1][0], p + 1)
        else:
            tasks.append((p, p + 1))
    return tasks


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --- executors: tasks run here, or on Dask ----------------------------------------------------------------

Commit = Callable[[tuple[int, int, int, float]], None]


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


def _run_here(job: Job, tasks: list[tuple[int, int]], commit: Commit, started: Callable[[], None]) -> list[float]:
    """Run the tasks in this process; returns its peak memory (MiB) as the one worker's."""
    started()
    for start, stop in tasks:
        commit(run_task(job, start, stop))
    return [peak_mib()]


def _local_cluster(workers: int) -> Any:
    import dask
    from distributed import LocalCluster

    # Dask's workers start with MALLOC_TRIM_THRESHOLD_ set, which also fixes glibc's mmap threshold: every
    # plane-sized buffer is then mapped and unmapped anew, and compressing a plane took 1.7x as long; its
    # profiler samples every thread each 10 ms
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    quiet = {"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.profile.enabled": False}
    with dask.config.set(quiet):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR)


def _run_dask(job: Job, todo: list[int], size: int, commit: Commit, workers: int, scheduler: str | None,
              started: Callable[[], None], first: int | None) -> list[float]:
    """Run the tasks on a LocalCluster of ``workers`` (or the cluster at ``scheduler``), at most two per
    worker in flight; returns each worker's peak memory (MiB)."""
    from distributed import Client, as_completed

    cluster = _local_cluster(workers) if scheduler is None else None
    try:
        client = Client(cluster if cluster is not None else scheduler, timeout="10s")
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise DatasetError(f"--scheduler {scheduler}: expected a running Dask scheduler there, could not connect "
                           f"({exc})") from None
    try:
        addresses = list(client.scheduler_info().get("workers", {}))
        if not addresses:
            raise DatasetError(f"--scheduler {scheduler}: the cluster has no workers")
        tasks = _tasks(todo, size, len(addresses))
        # warmed where the tasks run (each worker's task thread)
        client.gather([client.submit(warm_up, job, first, workers=[a], pure=False, allow_other_workers=False)
                       for a in addresses])
        started()
        pending = iter(tasks)
        running = as_completed()
        for start, stop in pending:
            running.add(client.submit(run_task, job, start, stop, pure=False))
            if running.count() >= 2 * len(addresses):
                break
        for future in running:
            commit(future.result())
            future.release()
            nxt = next(pending, None)
            if nxt is not None:
                running.add(client.submit(run_task, job, *nxt, pure=False))
        return sorted(client.run(peak_mib).values())
    except (DatasetError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a worker's error (Dask re-raises it here) or Dask's own (a worker killed)
        detail = " ".join(str(exc).split())[:500] or "no message"
        raise RuntimeError(f"a Dask worker failed: {type(exc).__name__}: {detail}") from exc
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --- the command's job ---------------------------------------------------------------------------------

def _channel_index(info: DatasetInfo, channel: str | int | None, where: str) -> int | None:
    if channel is None:
        return None
    channel = str(channel)
    if "C" not in info.axes:
        raise DatasetError(f"--channel {channel}: {where} has no channel axis (axes {info.axes})")
    count = info.shape[info.axes.index("C")]
    names = info.channel_names or []
    if channel in names:
        return names.index(channel)
    if channel.lstrip("-").isdigit():
        index = int(channel)
        if 0 <= index < count:
            return index
    listed = ", ".join(repr(n) for n in names) if names else "unnamed"
    raise DatasetError(f"--channel {channel}: expected a channel index 0..{count - 1} or a name ({listed}), "
                       f"got {channel!r}")


def _check_model(card: Any, info: DatasetInfo, where: str, model: Path) -> None:
    trained = card.input_dtype
    if trained is not None and np.dtype(trained) != info.dtype:
        raise DatasetError(f"{where}: expected {trained} planes (the bit depth {model} was trained on), got "
                           f"{info.dtype.name}; a model applies to the camera data it was trained on: train one on "
                           "frames of this bit depth")
    if min(info.plane_shape) < card.size_multiple:
        raise DatasetError(f"{where}: expected planes of at least {card.size_multiple}x{card.size_multiple} "
                           f"pixels for this model, got {info.plane_shape[0]}x{info.plane_shape[1]}")


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _prepare_output(output: Path, store: Path, settings: dict[str, Any], overwrite: bool,
                    source: Path) -> tuple[dict[str, Any] | None, list[Path]]:
    """Check the output's place: (the job record to resume, or None to start afresh; what ``--overwrite``
    replaces, removed only once the new run is ready to write)."""
    if _inside(output, source) or _inside(source, output) or _inside(store, source):
        what = "the input's own path" if output.resolve() == source.resolve() else "a path inside or around it"
        raise DatasetError(f"{output}: expected an output apart from the input {source}, got {what}")
    for path in {output, store}:
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()  # an empty folder holds nothing to lose: the output takes its place
    record = _store_job(store)
    unfinished = record is not None and not record.get("complete", False)
    if overwrite:
        from .datasets.omezarr import is_zarr

        for path in {output, store}:
            if path.is_dir() and not is_zarr(path):  # --overwrite replaces an output, never a folder of files
                raise DatasetError(f"{path}: expected an OME-Zarr output to replace, got a folder that is not "
                                   "one; not replaced (remove it yourself, or choose another --out)")
        # an OME-TIFF output is replaced by the new file's rename at the end; a store now, before the new one
        return None, [p for p in {store} if p.exists() or p.is_symlink()]
    if output != store and output.exists():
        raise DatasetError(f"{output}: already exists; pass --overwrite to replace it")
    if store.exists() and not unfinished:
        what = "a finished denoise" if record is not None else "a folder n2n did not make"
        raise DatasetError(f"{store}: already exists ({what}); pass --overwrite to replace it")
    if unfinished:
        assert record is not None
        changed = [k for k, v in settings.items() if record.get(k) != v]
        if changed:
            was = ", ".join(f"{k} {record.get(k)!r} (now {settings[k]!r})" for k in changed)
            raise DatasetError(f"{store}: holds an unfinished denoise with other settings: {was}; rerun it as it "
                               "was to continue, or pass --overwrite to start again")
        return record, []
    return None, []


@contextlib.contextmanager
def _exclusive(output: Path) -> Iterator[None]:
    """One run per output at a time: a second ``n2n denoise`` into the same output is refused while one runs
    (a lock file beside the output, released by the system when the process ends, even killed)."""
    import fcntl

    lock = output.with_name(f".{output.name}.n2n-lock")
    with _writing(output.parent):
        handle = lock.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "a process"
        handle.close()
        raise DatasetError(f"{output}: another n2n denoise is writing it ({holder}); wait for it or stop it "
                           "first") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: a waiting run then makes a new one
        handle.close()


def denoise(input_path: str | Path, model: str | Path, output: str | Path, cfg: DenoiseConfig | None = None,
            progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Denoise every plane of a recorded dataset (or one channel's, copying the others) into ``output``
    (OME-TIFF or OME-Zarr by its extension); rerun after an interruption to continue. ``progress(done,
    total, stage)`` is called as planes finish. Returns a summary (planes, rate, engine, where it went)."""
    cfg = cfg or DenoiseConfig()
    source, model, output = Path(input_path), Path(model), Path(output)
    output_kind(output)
    from .model import ModelCard

    ModelCard.load(model)  # a missing or damaged model is the first thing to say
    _check_writable(output.parent)
    with _exclusive(output):
        try:
            return _denoise(source, model, output, cfg, progress)
        finally:
            _release()


def _denoise(source: Path, model: Path, output: Path, cfg: DenoiseConfig,
             progress: Callable[[int, int, str], None] | None) -> dict[str, Any]:
    from .model import ModelCard

    out_kind = output_kind(output)
    card = ModelCard.load(model)
    store = output if out_kind == "zarr" else output.with_name(output.name + ".partial.zarr")
    reader = open_dataset(source)
    try:
        info = reader.info
        _check_model(card, info, str(source), model)
        channel = _channel_index(info, cfg.channel, str(source))
        settings: dict[str, Any] = {  # what a resumed run must share with the run it continues
            "input": str(source.resolve()), "input_kind": reader.kind, "input_shape": list(info.shape),
            "input_dtype": info.dtype.name, "model": str(model.resolve()),
            "model_card_sha256": _sha256(model / "model.json"), "channel": channel, "output_dtype": cfg.dtype,
            "requested_engine": cfg.engine, "requested_precision": cfg.precision, "device": cfg.device}
        record, replaced = _prepare_output(output, store, settings, cfg.overwrite, source)
        out_dtype = np.dtype(np.float32) if cfg.dtype == "float32" else info.dtype
        wanted = [p for p in range(info.planes) if channel is None or info.index(p)["C"] == channel]
        local = cfg.scheduler is None and cfg.workers == 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = cfg.threads or (None if local or cfg.scheduler else max(1, cores // cfg.workers))
        try:
            if record is None:
                record = _start(store, replaced, info, out_dtype, settings, cfg, reader, wanted,
                                threads if local else None)
            else:
                log.info("resuming %s: %d of %d planes were done", store,
                         sum(b - a for a, b in _done_ranges(store)), info.planes)
        except KeyboardInterrupt:
            raise DenoiseInterrupted("stopped before any plane was denoised; nothing to keep") from None
    finally:
        reader.close()
    job = Job(input=settings["input"], kind=reader.kind, model=settings["model"], store=str(store.resolve()),
              engine=record["engine"], precision=record["precision"], device=cfg.device, threads=threads,
              output_dtype=cfg.dtype, channel=channel, id=record.get("id", ""),
              model_sha256=settings["model_card_sha256"])
    todo = _todo(info.planes, _done_ranges(store))
    skipped = info.planes - len(todo)
    plane_mib = math.prod(info.plane_shape) * info.dtype.itemsize / 2**20
    size = max(1, min(MAX_TASK_PLANES, int(cfg.chunk_mib // max(plane_mib, 1e-9))))
    counts = {"planes": skipped, "denoised": 0, "busy_s": 0.0}
    t0 = time.perf_counter()
    ready = [t0]
    log_file = (store / PROGRESS_NAME).open("a")

    def commit(result: tuple[int, int, int, float]) -> None:
        start, stop, denoised, seconds = result
        log_file.write(f"{start} {stop}\n")
        log_file.flush()
        os.fsync(log_file.fileno())
        counts["planes"] += stop - start
        counts["denoised"] += denoised
        counts["busy_s"] += seconds
        if progress:
            progress(int(counts["planes"]), info.planes, "denoising")

    def started() -> None:
        ready[0] = time.perf_counter()

    if progress:
        progress(skipped, info.planes, "denoising")
    resume = "rerun the same command to continue"
    try:
        if local or not todo:
            peaks = _run_here(job, _tasks(todo, size), commit, started)
        else:
            peaks = _run_dask(job, todo, size, commit, cfg.workers, cfg.scheduler, started,
                              wanted[0] if wanted else None)
    except KeyboardInterrupt:
        raise DenoiseInterrupted(f"stopped after {int(counts['planes'])} of {info.planes} planes; {store} keeps "
                                 f"them: {resume}") from None
    finally:
        log_file.close()
    seconds = time.perf_counter() - t0
    running = time.perf_counter() - ready[0]
    try:
        _finish(output, store, out_kind, info, out_dtype, progress)
    except KeyboardInterrupt:
        raise DenoiseInterrupted(f"stopped while writing {output}; every plane is done in {store}: {resume}") \
            from None
    run = len(todo)
    return {"input": str(source), "output": str(output), "format": out_kind, "planes": info.planes,
            "planes_run": run, "planes_resumed": skipped, "planes_denoised": int(counts["denoised"]),
            "channel": channel, "dtype": out_dtype.name, "engine": job.engine, "precision": job.precision,
            "workers": len(peaks), "scheduler": cfg.scheduler or ("this process" if local else "LocalCluster"),
            "seconds": round(seconds, 3), "startup_s": round(seconds - running, 3),
            "planes_per_s": round(run / running, 2) if run and running > 0 else None,
            "planes_to_denoise": len(wanted), "task_seconds": round(counts["busy_s"], 3),
            "peak_mib_workers": peaks, "peak_mib_command": peak_mib()}


def _start(store: Path, replaced: list[Path], info: DatasetInfo, out_dtype: np.dtype, settings: dict[str, Any],
           cfg: DenoiseConfig, reader: Reader, wanted: list[int], threads: int | None) -> dict[str, Any]:
    """Decide the engine and precision on the first plane to denoise (timing precisions where ``auto``),
    then replace what ``--overwrite`` replaces and create the store with the job's record."""
    from .datasets.omezarr import OmeZarrWriter

    engine, precision = cfg.engine, cfg.precision
    if wanted:
        denoiser = _make_denoiser(str(Path(settings["model"])), cfg.engine, cfg.precision, cfg.device, threads,
                                  cfg.dtype)
        denoiser(reader.read(wanted[0], wanted[0] + 1)[0])
        engine, precision = denoiser.engine.name, denoiser.engine.precision
        log.info("denoising with %s at %s (recorded: a resumed run and every worker use it)", engine, precision)
        if cfg.scheduler is None and cfg.workers == 1:  # the same engine serves this process's tasks
            _keep(("denoiser", settings["model"], engine, precision, cfg.device, threads, cfg.dtype,
                   settings["model_card_sha256"]), denoiser)
        else:
            denoiser.engine.close()
    record = {**settings, "engine": engine, "precision": precision, "complete": False, "id": uuid.uuid4().hex,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n2n_version": _version()}
    out_info = DatasetInfo(axes=info.axes, shape=info.shape, dtype=out_dtype, physical=dict(info.physical),
                           channel_names=info.channel_names, plane_metadata=info.plane_metadata, name=info.name)
    with _writing(store.parent):
        for path in replaced:
            _remove(path)
        OmeZarrWriter.create(store, out_info, out_dtype, extra_attrs={"job": record})
        (store / PROGRESS_NAME).touch()
    return record


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Writes into ``folder``: a folder that cannot be written is a one-line error."""
    try:
        yield
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot write the output there ({exc.strerror or exc})") from None


def _check_writable(folder: Path) -> None:
    """Fail before any work when the output's folder cannot be made or written."""
    import tempfile

    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".n2n-write-check"):
            pass


def _finish(output: Path, store: Path, out_kind: str, info: DatasetInfo, out_dtype: np.dtype,
            progress: Callable[[int, int, str], None] | None) -> None:
    """Every plane is in the store: mark it complete (OME-Zarr), or write the OME-TIFF and drop the store."""
    if out_kind == "zarr":
        _set_complete(store)
        (store / PROGRESS_NAME).unlink(missing_ok=True)
        return
    from .datasets.ometiff import write_ome_tiff
    from .datasets.omezarr import OmeZarrReader

    stored = OmeZarrReader(store, metadata=False)
    out_info = DatasetInfo(axes=info.axes, shape=info.shape, dtype=out_dtype, physical=dict(info.physical),
                           channel_names=info.channel_names, plane_metadata=info.plane_metadata, name=info.name)

    def planes() -> Iterator[np.ndarray]:
        step = MAX_TASK_PLANES
        for start in range(0, info.planes, step):
            chunk = stored.read(start, start + step)
            yield from chunk
            if progress:
                progress(min(start + step, info.planes), info.planes, "writing OME-TIFF")

    with _writing(output.parent):
        write_ome_tiff(output, out_info, planes(), out_dtype)  # replaces an older file only once complete
    _remove(store)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("n2n-live")
    except PackageNotFoundError:
        return "unknown"
