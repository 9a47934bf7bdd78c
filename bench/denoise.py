"""``n2n denoise`` throughput and memory: planes/s with 1 and N workers, and the peak memory of each process
on an input 10× larger (bounded by a task of planes, so it should not grow with the input).

Each run is a real ``n2n denoise`` process (OME-TIFF in, OME-Zarr out) on a stack recorded from the
simulated camera; the larger input repeats that recording. Peak memory is what each process measured of
itself (its high-water mark, ``VmHWM``: the command, and each Dask worker at the end of its work), reported
in the command's summary, so nothing samples processes while they run. The precision is decided once (by the first run)
and given to the others, so every run does the same arithmetic::

    python -m bench.denoise --model runs/demo/model --json runs/bench_denoise.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench import command
from bench.command import progress_to_stderr, require_model
from bench.report import machine

__all__ = ["main", "run_denoise", "run_benchmark"]


def run_denoise(args: list[str], workdir: Path) -> dict[str, Any]:
    """Run ``n2n denoise ARGS --json`` as a process; its summary, which holds the peak memory (MiB) of the
    command and of each worker process as each measured its own."""
    summary = workdir / f"summary-{time.monotonic_ns()}.json"
    log = workdir / "denoise.log"
    with open(log, "ab") as sink:
        code = subprocess.run([sys.executable, "-m", "n2n", "denoise", *args, "--json", str(summary)],
                              stdout=sink, stderr=subprocess.STDOUT, timeout=3600).returncode
    if code != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"n2n denoise exited with {code}:\n{tail}")
    result: dict[str, Any] = json.loads(summary.read_text())
    result["peak_mib_per_worker"] = max(result["peak_mib_workers"])
    return result


def _record(path: Path, size: int, planes: int, repeat: int = 1, seed: int = 3) -> Path:
    """A recorded-looking stack: ``planes`` frames from the simulated camera, repeated ``repeat`` times
    (written plane by plane: the larger input never sits in memory)."""
    from streamer.datasets import DatasetInfo
    from streamer.datasets.ometiff import write_ome_tiff
    from streamer.sources import SimulatedCameraConfig, simulate_stack

    raw = simulate_stack(SimulatedCameraConfig(height=size, width=size, seed=seed), planes)[0]
    info = DatasetInfo(axes="TYX", shape=(planes * repeat, size, size), dtype=raw.dtype,
                       physical={"X": (0.65, "µm"), "Y": (0.65, "µm")}, name=path.name.split(".")[0])

    def frames() -> Iterator[np.ndarray]:
        for _ in range(repeat):
            yield from raw

    write_ome_tiff(path, info, frames(), raw.dtype)
    return path


def run_benchmark(model: Path, size: int = 512, planes: int = 200, workers: tuple[int, ...] = (1, 2),
                  threads: int = 1, large: int = 10, precision: str = "auto", workdir: Path | None = None,
                  progress: Any = print) -> dict[str, Any]:
    """Planes/s and peak memory for each worker count, on ``planes`` planes of ``size``² and on ``large``×
    as many (1: skip the larger input)."""
    with tempfile.TemporaryDirectory(prefix="n2n-bench-denoise-", dir=workdir) as tmp:
        work = Path(tmp)
        inputs = [(planes, _record(work / "recorded.ome.tif", size, planes))]
        if large > 1:
            inputs.append((planes * large, _record(work / "recorded_large.ome.tif", size, planes, repeat=large)))
        runs, same = [], True
        for count, source in inputs:
            for n in workers:
                progress(f"{count} planes of {size}², {n} worker(s), {threads} thread(s) each")
                out = work / f"w{n}.zarr"
                result = run_denoise([str(source), "--model", str(model), "--out", str(out), "--workers", str(n),
                                      "--threads", str(threads), "--precision", precision, "--overwrite"], work)
                precision = result["precision"]  # decided by the first run, given to the others
                runs.append(result)
            same = same and all(np.array_equal(_zarr(work / f"w{workers[0]}.zarr"), _zarr(work / f"w{n}.zarr"))
                                for n in workers[1:])
    report: dict[str, Any] = {
        "model": str(model), "size": size, "planes": [count for count, _ in inputs],
        "threads_per_worker": threads, "precision": precision, "engine": runs[0]["engine"],
        "identical_across_workers": same, "runs": [_row(r) for r in runs], "speedup": {}, "machine": machine(),
    }
    for count, _ in inputs:
        rows = [r for r in runs if r["planes"] == count]
        one = next((r for r in rows if r["workers"] == 1), rows[0])
        report["speedup"][str(count)] = {str(r["workers"]): round(r["planes_per_s"] / one["planes_per_s"], 2)
                                         for r in rows}
    return report


def _zarr(path: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(path / "0", mode="r")[...])


def _row(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("workers", "scheduler", "planes", "planes_per_s", "seconds", "startup_s", "peak_mib_command",
            "peak_mib_workers", "peak_mib_per_worker")
    return {k: r[k] for k in keys}


def table(report: dict[str, Any]) -> str:
    lines = [f"n2n denoise: planes of {report['size']}², {report['engine']} at {report['precision']}, "
             f"{report['threads_per_worker']} thread(s) per worker ({report['machine']['cpu']}, "
             f"{report['machine']['cpu_count']} CPUs)",
             "| planes | workers | planes/s | speed-up | seconds (of which start-up) | peak MiB per worker | "
             "peak MiB, command |", "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['planes']} | {r['workers']} ({r['scheduler']}) | {r['planes_per_s']} | "
                     f"{report['speedup'][str(r['planes'])][str(r['workers'])]}× | {r['seconds']} ({r['startup_s']})"
                     f" | {r['peak_mib_per_worker']} | {r['peak_mib_command']} |")
    lines.append(f"identical pixels across worker counts: {report['identical_across_workers']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command.parser("bench.denoise", __doc__, show_defaults=True)
    parser.add_argument("--model", type=Path, default=Path("runs/demo/model"), help="model folder")
    parser.add_argument("--size", type=int, default=512, help="plane side in pixels")
    parser.add_argument("--planes", type=int, default=200, help="planes in the recorded stack")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--threads", type=int, default=1, help="engine threads per worker")
    parser.add_argument("--large", type=int, default=10, help="also run on an input this many times larger "
                                                               "(memory per worker should not grow; 1: skip)")
    parser.add_argument("--precision", default="auto", help="auto (decided by the first run) or one precision")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    require_model(parser, args.model)
    try:
        workers = tuple(int(w) for w in args.workers.split(","))
    except ValueError:
        parser.error(f"--workers: expected a comma list of numbers such as 1,2, got {args.workers!r}")
    report = run_benchmark(args.model, args.size, args.planes, workers, args.threads, args.large, args.precision,
                           progress=progress_to_stderr)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
