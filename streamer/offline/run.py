"""``n2n denoise``: the job. Checks the input against the model (or each channel's model of a model set), decides
the engine and precision once per model, prepares or resumes the work store, runs the tasks here or on Dask, and
finishes the output."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..core.card import CARD_NAME
from ..core.modelset import NO_MODEL_FLAG, ModelSet
from ..core.streams import channel_index
from ..datasets import DatasetError, DatasetInfo, open_dataset, output_kind
from ..datasets.base import Reader
from ..datasets.channels import channel_labels, route_channels
from ..denoiser import FLAG_FLOAT_PATH, is_raw
from .config import DenoiseConfig
from .marks import AlreadyDenoised, read_marks, refusal, to_ranges
from .store import (
    FLAGS_NAME,
    MAX_TASK_PLANES,
    PROGRESS_NAME,
    UNREADABLE_FLAG,
    UNREADABLE_NAME,
    check_writable,
    done_ranges,
    exclusive,
    finish,
    flagged_planes,
    prepare_output,
    read_flags,
    read_unreadable,
    remove_path,
    sha256,
    split_tasks,
    todo_planes,
    writing,
)
from .task import Job, JobModel, TaskResult, denoiser_key, keep, make_denoiser, peak_mib, release, run_task, warm_up

__all__ = ["AlreadyDenoised", "DenoiseInterrupted", "IncompleteInput", "denoise"]

log = logging.getLogger("n2n.streamer")


class DenoiseInterrupted(KeyboardInterrupt):
    """Ctrl-C: what was finished is kept; the message says how to continue."""


class IncompleteInput(DatasetError):
    """The input is damaged (cut short, a plane that cannot be read): every plane that could be read was denoised
    and the output written, marking the missing ones; the message (one line) names the input and the planes.
    ``summary`` is the run's summary, as :func:`denoise` returns it."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def _ranges(planes: list[int]) -> str:
    """1, 3-7, 9 (at most 6 ranges, then …)."""
    runs = to_ranges(planes)
    text = ", ".join(str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in runs[:6])
    return text + (", …" if len(runs) > 6 else "")


def _incomplete(source: Path, output: Path, planes: int, missing: dict[int, str], damage: list[str]) -> str:
    """One line: which planes of ``source`` could not be read, why, and what the output holds."""
    by_reason: dict[str, list[int]] = {}
    for plane in sorted(missing):
        by_reason.setdefault(missing[plane], []).append(plane)
    parts = [f"plane{'s' if len(v) > 1 else ''} {_ranges(v)}: {why}" for why, v in list(by_reason.items())[:3]]
    if len(by_reason) > 3:
        parts.append(f"{len(by_reason) - 3} other reason(s)")
    said = "; ".join(parts)
    if missing:
        head = (f"{source}: {len(missing)} of {planes} planes could not be read ({said})"
                + (f"; the file: {'; '.join(damage)}" if damage else ""))
        rest = planes - len(missing)
        tail = (f"the other {rest} {'was' if rest == 1 else 'were'} denoised into {output}, which lists the missing "
                "ones (they hold no pixels of the input)")
    else:
        head = f"{source}: {'; '.join(damage)}"
        tail = f"the {planes} plane(s) it holds were denoised into {output}"
    return f"{head}; {tail}"


# --- executors: tasks run here, or on Dask ----------------------------------------------------------------

Commit = Callable[[TaskResult], None]


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
    # profiler samples every thread each 10 ms. Its logs stay quiet below CRITICAL: a task's failure comes back
    # through its future (and is said in our words), while a worker whose heartbeat meets the cluster closing
    # after Ctrl-C logs a traceback at ERROR (1 run in 12 here) that says nothing to the user
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    quiet = {"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.profile.enabled": False}
    with dask.config.set(quiet):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.CRITICAL)


def _run_dask(job: Job, todo: list[int], size: int, commit: Commit, workers: int, scheduler: str | None,
              started: Callable[[], None], firsts: tuple[int, ...]) -> list[float]:
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
        tasks = split_tasks(todo, size, len(addresses))
        # warmed where the tasks run (each worker's task thread)
        client.gather([client.submit(warm_up, job, firsts, workers=[a], pure=False, allow_other_workers=False)
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
    try:
        return channel_index(channel, info.channel_names or [], info.shape[info.axes.index("C")])
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _plane_channels(info: DatasetInfo) -> np.ndarray:
    """Each plane's channel (its index along C; 0 for every plane of a dataset without a C axis), by flat index."""
    if "C" not in info.axes:
        return np.zeros(info.planes, np.intp)
    lead = info.shape[:-2]
    return np.unravel_index(np.arange(info.planes), lead)[info.axes.index("C")]


def _check_model(card: Any, info: DatasetInfo, where: str, model: Path) -> None:
    trained = card.input_dtype
    if trained is not None and np.dtype(trained) != info.dtype:
        raise DatasetError(f"{where}: expected {trained} planes (the bit depth {model} was trained on), got "
                           f"{info.dtype.name}; a model applies to the camera data it was trained on: train one on "
                           "frames of this bit depth")
    if min(info.plane_shape) < card.size_multiple:
        raise DatasetError(f"{where}: expected planes of at least {card.size_multiple}x{card.size_multiple} "
                           f"pixels for this model, got {info.plane_shape[0]}x{info.plane_shape[1]}")


def denoise(input_path: str | Path, model: str | Path | ModelSet | Sequence[str | Path], output: str | Path,
            cfg: DenoiseConfig | None = None, progress: Callable[[int, int, str], None] | None = None
            ) -> dict[str, Any]:
    """Denoise every plane of a recorded dataset (or one channel's, copying the others) into ``output``
    (OME-TIFF or OME-Zarr by its extension); rerun after an interruption to continue. ``model``: a model folder
    (or zoo package) for every channel, or a model set (:class:`~streamer.core.modelset.ModelSet`, or what
    ``ModelSet.parse`` reads: ``["DAPI=runs/dapi", "GFP=runs/gfp"]``, a ``models.yaml``): each channel's planes go
    through its own model, and a channel without one is written as it is (raw, never another channel's model).
    ``progress(done, total, stage)`` is called as planes finish. Returns a summary (planes, rate, engine, which
    model served which channel, where it went)."""
    cfg = cfg or DenoiseConfig()
    models = model if isinstance(model, ModelSet) else ModelSet.parse(model)
    source, output = Path(input_path), Path(output)
    out_kind = output_kind(output)
    from ..core.card import ModelCard

    cards = {m: ModelCard.load(m) for m in models.models}  # a missing or damaged model is the first thing to say
    check_writable(output.parent)
    with exclusive(output):
        try:
            return _denoise(source, models, cards, output, out_kind, cfg, progress)
        finally:
            release()


def _plan(source: Path, info: DatasetInfo, models: ModelSet, cards: dict[str, Any],
          channel: int | None) -> tuple[list[str], list[str | None], list[str]]:
    """Which model denoises which channel (per channel: the model, None: written raw), each model checked against
    the data; and the channels the set names that the dataset does not hold."""
    labels = channel_labels(info)
    routes, unused = route_channels(models, labels, str(source))
    if channel is not None:
        if routes[channel] is None:
            raise DatasetError(f"--channel {labels[channel]}: {source}'s channel {labels[channel]!r} has no model in "
                               f"the set ({models.describe()}); expected --model {labels[channel]}=FOLDER")
        routes = [m if c == channel else None for c, m in enumerate(routes)]  # the others are copied
    served: dict[str, list[str]] = {}
    for c, m in enumerate(routes):
        if m is not None:
            served.setdefault(m, []).append(labels[c])
    if not served:
        listed = ", ".join(repr(n) for n in labels)
        raise DatasetError(f"{source}: expected a model for at least one of its channels ({listed}), got a model "
                           f"set with none of them ({models.describe()})")
    for m, names in served.items():
        where = str(source) if models.single else f"{source} (channel {', '.join(names)})"
        _check_model(cards[m], info, where, Path(m))
    return labels, routes, unused


def _say_plan(source: Path, info: DatasetInfo, models: ModelSet, labels: list[str], routes: list[str | None],
              unused: list[str], channel: int | None) -> None:
    """Say, once the run goes ahead (a refused run says one line only), which model serves which channels, each
    channel without a model (written raw), and each channel of the set the dataset does not hold."""
    for key in unused:
        log.warning("%s: the model set names channel %r, which it does not hold (its channels: %s): %s is not used",
                    source, key, ", ".join(repr(n) for n in labels), models.channels[key])
    if models.single and len(labels) > 1 and channel is None:
        log.info("%s: %s serves each of its %d channels (%s), one model for all; give each channel its own with "
                 "--model NAME=FOLDER", source, models.default, len(labels), ", ".join(labels))
    elif not models.single:
        log.info("%s: %s", source, ", ".join(f"channel {labels[c]} → {m}" for c, m in enumerate(routes)
                                             if m is not None))
        if channel is None:
            count = info.planes // len(labels)
            for c in (c for c, m in enumerate(routes) if m is None):
                log.warning("%s: channel %s has no model in the set (%s): its %d plane(s) are written as they are, "
                            "raw, not denoised (flag %s)", source, labels[c], models.describe(), count,
                            NO_MODEL_FLAG)


def _denoise(source: Path, models: ModelSet, cards: dict[str, Any], output: Path, out_kind: str,
             cfg: DenoiseConfig, progress: Callable[[int, int, str], None] | None) -> dict[str, Any]:
    store = output if out_kind == "zarr" else output.with_name(output.name + ".partial.zarr")
    reader = open_dataset(source)
    try:
        info = reader.info
        channel = _channel_index(info, cfg.channel, str(source))
        labels, routes, unused = _plan(source, info, models, cards, channel)

        used = list(dict.fromkeys(m for m in routes if m is not None))  # each model once, in channel order
        resolved = {m: str(Path(m).resolve()) for m in used}
        shas = {m: sha256(cards[m].run_dir / CARD_NAME) for m in used}
        by_plane = _plane_channels(info)
        slot = np.array([-1 if m is None else used.index(m) for m in routes])[by_plane]  # per plane: its model
        wanted = [int(p) for p in np.flatnonzero(slot >= 0)]
        no_model = [int(p) for p in np.flatnonzero(slot < 0)] if channel is None else []
        marks = read_marks(reader)  # the input's: never what a partial output of this run holds
        marked = [p for p in wanted if p in marks.planes]
        if marked and not (cfg.denoise_again or cfg.skip_denoised):
            raise AlreadyDenoised(refusal(source, marks, len(marked), len(wanted)))
        skipped_marked = marked if cfg.skip_denoised else []
        if skipped_marked:
            wanted = [p for p in wanted if p not in marks.planes]
        firsts: dict[str, int] = {}  # each model's first plane to denoise: where its engine is decided
        for p in wanted:
            firsts.setdefault(used[slot[p]], p)
            if len(firsts) == len(used):
                break
        settings: dict[str, Any] = {  # what a resumed run must share with the run it continues
            "input": str(source.resolve()), "input_kind": reader.kind, "input_shape": list(info.shape),
            "input_dtype": info.dtype.name, "model": resolved[used[0]] if models.single else None,
            "model_card_sha256": shas[used[0]] if models.single else None, "channel": channel,
            "output_dtype": cfg.dtype, "requested_engine": cfg.engine, "requested_precision": cfg.precision,
            "device": cfg.device, "skip_denoised": cfg.skip_denoised,
            "averaged": cfg.averaged,
            # a model per channel: which one (None: written raw); a single model serves every channel
            "models": None if models.single else [
                {"channel": labels[c], "model": resolved[m] if m else None, "sha256": shas[m] if m else None}
                for c, m in enumerate(routes)]}
        record, replaced = prepare_output(output, store, settings, cfg.overwrite, source)
        _say_plan(source, info, models, labels, routes, unused, channel)
        if marked and cfg.denoise_again:
            log.warning("%s: denoising again %d plane(s) marked denoised already (%s), as --denoise-again asks: "
                        "they come out smoother than one pass makes them", source, len(marked), marks.how)
        elif skipped_marked:
            log.info("%s: %d plane(s) marked denoised already (%s) are copied as they are (--skip-denoised); "
                     "%d are denoised", source, len(skipped_marked), marks.how, len(wanted))
        out_dtype = np.dtype(np.float32) if cfg.dtype == "float32" else info.dtype
        local = cfg.scheduler is None and cfg.workers == 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = cfg.threads or (None if local or cfg.scheduler else max(1, cores // cfg.workers))
        try:
            if record is None:
                record = _start(store, replaced, info, out_dtype, settings, cfg, reader,
                                [(resolved[m], shas[m], firsts.get(m)) for m in used], threads if local else None)
            else:
                log.info("resuming %s: %d of %d planes were done", store,
                         sum(b - a for a, b in done_ranges(store)), info.planes)
        except KeyboardInterrupt:
            raise DenoiseInterrupted("stopped before any plane was denoised; nothing to keep") from None
    finally:
        reader.close()
    damage = list(getattr(reader, "damage", []) or [])
    # the first model's engine and precision are the record's own; the others' (a model per channel) in "engines"
    engines = {**(record.get("engines") or {}), resolved[used[0]]: (record["engine"], record["precision"])}
    job_models = tuple(JobModel(resolved[m], shas[m], *engines[resolved[m]]) for m in used)
    job = Job(input=settings["input"], kind=reader.kind, models=job_models,
              routes=tuple(None if m is None else used.index(m) for m in routes), store=str(store.resolve()),
              device=cfg.device, threads=threads, output_dtype=cfg.dtype, channel=channel, id=record.get("id", ""),
              trust_code=cfg.trust_code, copy=tuple((a, b) for a, b in to_ranges(skipped_marked)),
              averaged=cfg.averaged)
    todo = todo_planes(info.planes, done_ranges(store))
    skipped = info.planes - len(todo)
    plane_mib = math.prod(info.plane_shape) * info.dtype.itemsize / 2**20
    size = max(1, min(MAX_TASK_PLANES, int(cfg.chunk_mib // max(plane_mib, 1e-9))))
    counts = {"planes": skipped, "denoised": 0, "busy_s": 0.0}
    t0 = time.perf_counter()
    ready = [t0]
    log_file = (store / PROGRESS_NAME).open("a")
    flags_file = (store / FLAGS_NAME).open("a")
    unreadable_file = (store / UNREADABLE_NAME).open("a")

    def commit(result: TaskResult) -> None:
        start, stop, denoised, seconds, flagged, unreadable = result
        if unreadable:  # why, before the flags and the progress line
            unreadable_file.write("".join(f"{plane}\t{' '.join(why.split())}\n" for plane, why in unreadable))
            unreadable_file.flush()
            os.fsync(unreadable_file.fileno())
            flagged = [*flagged, *((plane, (UNREADABLE_FLAG,)) for plane, _ in unreadable)]
        if flagged:  # before the task's progress line: a finished task's flags are never lost
            flags_file.write("".join(f"{plane} {','.join(flags)}\n" for plane, flags in flagged))
            flags_file.flush()
            os.fsync(flags_file.fileno())
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
            peaks = _run_here(job, split_tasks(todo, size), commit, started)
        else:
            peaks = _run_dask(job, todo, size, commit, cfg.workers, cfg.scheduler, started,
                              tuple(firsts.values()))
    except KeyboardInterrupt:
        raise DenoiseInterrupted(f"stopped after {int(counts['planes'])} of {info.planes} planes; {store} keeps "
                                 f"them: {resume}") from None
    finally:
        log_file.close()
        flags_file.close()
        unreadable_file.close()
    seconds = time.perf_counter() - t0
    running = time.perf_counter() - ready[0]
    flags = read_flags(store)  # this run's and, resumed, the earlier runs' planes
    by_flag = flagged_planes(flags)
    kept_raw = sorted(p for p, f in flags.items() if is_raw(f))
    if kept_raw:
        log.warning("%d of %d planes were written RAW, not denoised: the denoised plane failed the output check "
                    "(planes %s%s)", len(kept_raw), len(wanted), ", ".join(map(str, kept_raw[:10])),
                    ", ..." if len(kept_raw) > 10 else "")
    missing = read_unreadable(store)
    record_missing = ({"planes": {str(p): why for p, why in sorted(missing.items())}, "input_damage": damage}
                      if missing or damage else None)
    # the output's planes that hold denoised pixels: this run's (but those written raw) and the input's copied
    # or denoised again (a marked plane written raw is the input's denoised one); never an unreadable one
    holds = (set(wanted) - set(kept_raw)) | marks.planes
    holds -= set(missing)
    record_denoised: dict[str, Any] = {"planes": to_ranges(holds), "input": settings["input"], "channel": channel,
                                       "model": settings["model"]}
    record_denoised["averaged"] = cfg.averaged
    per_channel = {labels[c]: m for c, m in enumerate(routes)} if channel is None else {labels[channel]: used[0]}
    if not models.single:
        record_denoised["models"] = {c: resolved[m] if m else None for c, m in per_channel.items()}
    raw_planes = set(no_model) - marks.planes - set(missing)  # written as they are: not denoised, said why
    if raw_planes:
        record_denoised["no_model"] = {"flag": NO_MODEL_FLAG, "planes": to_ranges(raw_planes),
                                       "channels": [c for c, m in per_channel.items() if m is None]}
    try:
        finish(output, store, out_kind, info, out_dtype, progress, by_flag, record_missing, record_denoised)
    except KeyboardInterrupt:
        raise DenoiseInterrupted(f"stopped while writing {output}; every plane is done in {store}: {resume}") \
            from None
    run = len(todo)
    summary = {"input": str(source), "output": str(output), "format": out_kind, "planes": info.planes,
               "planes_run": run, "planes_resumed": skipped, "planes_denoised": int(counts["denoised"]),
               "channel": channel, "dtype": out_dtype.name, "averaged": cfg.averaged, "engine": job.models[0].engine,
               "precision": job.models[0].precision, "models": per_channel,
               "engines": {m: {"engine": j.engine, "precision": j.precision} for m, j in zip(used, job.models)},
               "planes_no_model": len(no_model), "channels_no_model": [c for c, m in per_channel.items() if m is None],
               "workers": len(peaks), "scheduler": cfg.scheduler or ("this process" if local else "LocalCluster"),
               "seconds": round(seconds, 3), "startup_s": round(seconds - running, 3),
               "planes_per_s": round(run / running, 2) if run and running > 0 else None,
               "planes_to_denoise": len(wanted), "task_seconds": round(counts["busy_s"], 3),
               "planes_kept_raw": len(kept_raw), "planes_float_path": len(by_flag.get(FLAG_FLOAT_PATH, [])),
               "flagged_planes": by_flag, "planes_unreadable": len(missing),
               "unreadable_planes": {str(p): why for p, why in sorted(missing.items())}, "input_damage": damage,
               "planes_marked_denoised": len(marked), "planes_denoised_again": 0 if skipped_marked else len(marked),
               "planes_copied_marked": len(skipped_marked), "peak_mib_workers": peaks, "peak_mib_command": peak_mib()}
    if missing or damage:
        raise IncompleteInput(_incomplete(source, output, info.planes, missing, damage), summary)
    return summary


def _start(store: Path, replaced: list[Path], info: DatasetInfo, out_dtype: np.dtype, settings: dict[str, Any],
           cfg: DenoiseConfig, reader: Reader, models: list[tuple[str, str, int | None]],
           threads: int | None) -> dict[str, Any]:
    """Decide each model's engine and precision on the first plane it denoises (``models``: its path, card sha256
    and that plane; timing precisions where ``auto``), then replace what ``--overwrite`` replaces and create the
    store with the job's record (``engine`` and ``precision``: the first model's; ``engines``: the others', by
    model)."""
    from ..datasets.omezarr import OmeZarrWriter

    engines: dict[str, tuple[str, str]] = {}
    for index, (model, sha, first) in enumerate(models):
        engine: str = cfg.engine
        precision: str = cfg.precision
        if first is not None:
            denoiser = make_denoiser(model, cfg.engine, cfg.precision, cfg.device, threads, cfg.dtype,
                                     retime=cfg.retime, trust_code=cfg.trust_code, averaged=cfg.averaged)
            denoiser(reader.read(first, first + 1)[0])
            engine, precision = denoiser.engine.name, denoiser.engine.precision
            log.info("denoising with %s at %s%s (recorded: a resumed run and every worker use it)", engine, precision,
                     f" ({model})" if len(models) > 1 else "")
            if cfg.scheduler is None and cfg.workers == 1:  # the same engine serves this process's tasks
                keep(denoiser_key(index, model, engine, precision, cfg.device, threads, cfg.dtype, sha, cfg.averaged),
                     denoiser)
            else:
                denoiser.close()
        engines[model] = (engine, precision)
    engine, precision = engines.pop(models[0][0])
    record = {**settings, "engine": engine, "precision": precision, "engines": engines, "complete": False,
              "id": uuid.uuid4().hex,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n2n_version": _version()}
    out_info = dataclasses.replace(info, dtype=out_dtype)  # the input's description, the output's pixels
    with writing(store.parent):
        for path in replaced:
            remove_path(path)
        OmeZarrWriter.create(store, out_info, out_dtype, extra_attrs={"job": record})
        (store / PROGRESS_NAME).touch()
    return record


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("n2n-live")
    except PackageNotFoundError:
        return "unknown"
