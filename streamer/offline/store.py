"""Where ``n2n denoise`` writes: the output's place (checks, ``--overwrite``, one run at a time), the work
store's job record and progress log, the split of the planes to do into tasks, and the finished output."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import DatasetError, DatasetInfo

__all__ = ["DENOISED_NAMESPACE", "FLAGS_NAME", "LATER_SETTINGS", "MAX_TASK_PLANES", "MISSING_NAMESPACE",
           "PROGRESS_NAME", "UNREADABLE_FLAG", "UNREADABLE_NAME", "check_writable", "done_ranges", "exclusive",
           "finish", "flagged_planes", "prepare_output", "read_flags", "read_unreadable", "remove_path", "sha256",
           "split_tasks", "store_job", "store_record", "todo_planes", "writing"]

PROGRESS_NAME = "n2n-progress.log"
"""In the store: one line ``START STOP`` per finished task (plane ranges, flat indices)."""
FLAGS_NAME = "n2n-flags.log"
"""In the store: one line ``PLANE FLAG[,FLAG...]`` per plane the Denoiser's checks flagged, written before its
task's progress line (a plane denoised again after a resume: its last line counts)."""
UNREADABLE_NAME = "n2n-unreadable.log"
"""In the store: one line ``PLANE<TAB>WHY`` per input plane that could not be read (also flagged
:data:`UNREADABLE_FLAG` in the flags log), written before its task's progress line."""
UNREADABLE_FLAG = "unreadable"
MISSING_NAMESPACE = "n2n-live:missing-planes"
"""The output's record of the input planes that could not be read (OME-TIFF: a CommentAnnotation's JSON;
OME-Zarr: ``n2n-live.missing_planes``): ``{"planes": {PLANE: WHY}, "input_damage": [...]}``; those planes hold
no pixels of the input (zeros in an OME-TIFF, unwritten chunks, read as 0, in an OME-Zarr)."""
DENOISED_NAMESPACE = "n2n-live:denoised-planes"
"""The output's record of its planes that hold denoised pixels (OME-TIFF: a CommentAnnotation's JSON; OME-Zarr:
``n2n-live.denoised_planes``): ``{"planes": [[START, STOP], ...], "input": PATH, "channel": C}``, the planes this run
denoised and those of the input it copied that were denoised already. ``n2n denoise`` reads it back: such a plane
is not denoised again unless asked (``--denoise-again``). With a model per channel, also ``"models"`` (channel →
model, null: none) and, where a channel had no model, ``"no_model": {"flag": "raw:no_model", "planes": [[START,
STOP], ...], "channels": [NAME, ...]}``: those planes hold the input's pixels as they were, never denoised ones."""
MAX_TASK_PLANES = 16
LATER_SETTINGS: dict[str, Any] = {"skip_denoised": False, "models": None, "averaged": 1}
"""Settings a job record made by an earlier release lacks, as that release ran them (a resume compares them)."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_record(store: Path) -> dict[str, Any] | None:
    """What n2n recorded in a store's attributes (``n2n-live``: the job, flagged, missing and denoised planes);
    None: no Zarr v3 group there, or nothing of ours."""
    meta = store / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
        return None
    ours = attrs.get("n2n-live") if isinstance(attrs, dict) else None
    return ours if isinstance(ours, dict) else None


def store_job(store: Path) -> dict[str, Any] | None:
    """The job record of an n2n store (None: no store there, or not one of ours)."""
    ours = store_record(store)
    job = ours.get("job") if ours is not None else None
    return job if isinstance(job, dict) else None


def set_complete(store: Path, flagged: dict[str, list[int]] | None = None,
                 missing: dict[str, Any] | None = None, denoised: dict[str, Any] | None = None) -> None:
    """Mark the store's job complete; ``flagged``: the planes the Denoiser's checks flagged, by flag (recorded as
    ``n2n-live.flagged_planes``: a ``raw:…`` plane holds the input's pixels, not denoised ones); ``denoised``: the
    record of the planes that hold denoised pixels (``n2n-live.denoised_planes``, see
    :data:`DENOISED_NAMESPACE`)."""
    import zarr

    group = zarr.open_group(store, mode="r+")
    ours: dict[str, Any] = dict(group.attrs.get("n2n-live", {}))  # type: ignore[arg-type]
    ours["job"] = {**ours.get("job", {}), "complete": True,
                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    ours["flagged_planes"] = flagged or {}
    if missing:
        ours["missing_planes"] = missing
    if denoised is not None:
        ours["denoised_planes"] = denoised
    group.attrs["n2n-live"] = ours


def read_unreadable(store: Path, done: list[tuple[int, int]] | None = None) -> dict[int, str]:
    """The input planes the store's finished tasks could not read: {plane: why} (see :data:`UNREADABLE_NAME`)."""
    path = store / UNREADABLE_NAME
    if not path.is_file():
        return {}
    ranges = done_ranges(store) if done is None else done
    finished = {p for a, b in ranges for p in range(a, b)}
    out: dict[int, str] = {}
    for line in path.read_text().splitlines():
        plane, _, why = line.partition("\t")
        if plane.isdigit() and int(plane) in finished and why:
            out[int(plane)] = why
    return out


def read_flags(store: Path, done: list[tuple[int, int]] | None = None) -> dict[int, tuple[str, ...]]:
    """The flagged planes of the store's finished tasks (``done``: their ranges, default the progress log's):
    {plane: its flags}; a line cut short by a kill, or of a task never finished, is ignored."""
    path = store / FLAGS_NAME
    if not path.is_file():
        return {}
    ranges = done_ranges(store) if done is None else done
    finished = {p for a, b in ranges for p in range(a, b)}
    out: dict[int, tuple[str, ...]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in finished:
            out[int(parts[0])] = tuple(f for f in parts[1].split(",") if f)
    return out


def flagged_planes(flags: dict[int, tuple[str, ...]]) -> dict[str, list[int]]:
    """{flag: the planes that have it, in order}."""
    by_flag: dict[str, list[int]] = {}
    for plane in sorted(flags):
        for flag in flags[plane]:
            by_flag.setdefault(flag, []).append(plane)
    return by_flag


def done_ranges(store: Path) -> list[tuple[int, int]]:
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


def todo_planes(planes: int, done: list[tuple[int, int]]) -> list[int]:
    finished = np.zeros(planes, bool)
    for a, b in done:
        finished[a:b] = True
    return [int(p) for p in np.flatnonzero(~finished)]


def split_tasks(todo: list[int], size: int, workers: int = 1) -> list[tuple[int, int]]:
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


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def prepare_output(output: Path, store: Path, settings: dict[str, Any], overwrite: bool,
                    source: Path) -> tuple[dict[str, Any] | None, list[Path]]:
    """Check the output's place: (the job record to resume, or None to start afresh; what ``--overwrite``
    replaces, removed only once the new run is ready to write)."""
    if _inside(output, source) or _inside(source, output) or _inside(store, source):
        what = "the input's own path" if output.resolve() == source.resolve() else "a path inside or around it"
        raise DatasetError(f"{output}: expected an output apart from the input {source}, got {what}")
    for path in {output, store}:
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()  # an empty folder holds nothing to lose: the output takes its place
    record = store_job(store)
    unfinished = record is not None and not record.get("complete", False)
    if overwrite:
        from ..datasets.omezarr import is_zarr

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
        changed = [k for k, v in settings.items() if record.get(k, LATER_SETTINGS.get(k)) != v]
        if changed:
            was = ", ".join(f"{k} {record.get(k)!r} (now {settings[k]!r})" for k in changed)
            raise DatasetError(f"{store}: holds an unfinished denoise with other settings: {was}; rerun it as it "
                               "was to continue, or pass --overwrite to start again")
        return record, []
    return None, []


@contextlib.contextmanager
def exclusive(output: Path) -> Iterator[None]:
    """One run per output at a time: a second ``n2n denoise`` into the same output is refused while one runs
    (a lock file beside the output, released by the system when the process ends, even killed)."""
    import fcntl

    lock = output.with_name(f".{output.name}.n2n-lock")
    with writing(output.parent):
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


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Writes into ``folder``: a folder that cannot be written is a one-line error."""
    try:
        yield
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot write the output there ({exc.strerror or exc})") from None


def check_writable(folder: Path) -> None:
    """Fail before any work when the output's folder cannot be made or written."""
    import tempfile

    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".n2n-write-check"):
            pass


def finish(output: Path, store: Path, out_kind: str, info: DatasetInfo, out_dtype: np.dtype,
            progress: Callable[[int, int, str], None] | None, flagged: dict[str, list[int]] | None = None,
            missing: dict[str, Any] | None = None, denoised: dict[str, Any] | None = None) -> None:
    """Every plane is in the store: mark it complete (OME-Zarr, recording the ``flagged`` planes, the ``missing``
    ones, see :data:`MISSING_NAMESPACE`, and the ``denoised`` ones, see
    :data:`DENOISED_NAMESPACE`), or write the OME-TIFF (the same records as
    CommentAnnotations) and drop the store."""
    if out_kind == "zarr":
        set_complete(store, flagged, missing, denoised)
        for name in (PROGRESS_NAME, FLAGS_NAME, UNREADABLE_NAME):
            (store / name).unlink(missing_ok=True)
        return
    from ..datasets.ometiff import write_ome_tiff
    from ..datasets.omezarr import OmeZarrReader

    stored = OmeZarrReader(store, metadata=False)
    out_info = dataclasses.replace(info, dtype=out_dtype)  # the input's description, the output's pixels

    def planes() -> Iterator[np.ndarray]:
        step = MAX_TASK_PLANES
        for start in range(0, info.planes, step):
            chunk = stored.read(start, start + step)
            yield from chunk
            if progress:
                progress(min(start + step, info.planes), info.planes, "writing OME-TIFF")

    with writing(output.parent):
        notes = [{"Namespace": MISSING_NAMESPACE, "Value": json.dumps(missing)}] if missing else []
        if denoised is not None:
            notes.append({"Namespace": DENOISED_NAMESPACE, "Value": json.dumps(denoised)})
        # replaces an older file only once complete
        write_ome_tiff(output, out_info, planes(), out_dtype, notes or None)
    remove_path(store)
