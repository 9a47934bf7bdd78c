"""The processes a benchmark starts: ``n2n serve`` and ``bench.echo``, the one place that spawns them.

Every child is started with ``--ready-file``, waited for with a timeout (an error quotes the end of its
log), stopped with SIGTERM and then SIGKILL, and always reaped. Its output goes to a log file (not a
pipe: nobody has to keep reading it), in ``log_dir`` when given so that it outlives the run::

    with start_server(model, workdir, mode="lossless", engine="onnxruntime") as server:
        client = StreamClient(server.endpoints)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.core.processes import stop_process
from streamer.endpoints import ENDPOINT_NAMES, Endpoints

__all__ = ["Process", "log_tail", "peak_mb", "rss_mb", "serve_command", "spawn", "start_echo", "start_server"]

READY_POLL_S = 0.05


@dataclass
class Process:
    """A started child: what it wrote to its ready file, and its log. A context manager that stops it."""

    name: str
    popen: subprocess.Popen
    ready: dict[str, Any]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def endpoints(self) -> dict[str, str]:
        """The addresses a ``n2n serve`` bound (``:*`` ports resolved)."""
        return self.ready["endpoints"]

    @property
    def address(self) -> str:
        """The address a ``bench.echo`` bound."""
        return self.ready["address"]

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; reaped. Returns the exit status."""
        stop_process(self.popen, timeout)
        return self.popen.returncode

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_tail(path: Path, chars: int = 4000) -> str:
    """The last ``chars`` characters of a log ('' when it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def spawn(cmd: list[str], workdir: Path, name: str, timeout: float = 180.0, log_dir: Path | None = None) -> Process:
    """Start ``cmd --ready-file WORKDIR/NAME.ready.json`` with its output in ``NAME.log`` (in ``log_dir``,
    else ``workdir``) and wait until it has written the ready file; stopped again if it does not."""
    workdir.mkdir(parents=True, exist_ok=True)
    (log_dir or workdir).mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{name}.ready.json"
    log = (log_dir or workdir) / f"{name}.log"
    ready.unlink(missing_ok=True)
    with open(log, "wb") as sink:
        popen = subprocess.Popen([*cmd, "--ready-file", str(ready)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {popen.returncode} before it was ready ({log}):\n"
                                   f"{log_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} was not ready within {timeout:g} s ({log}):\n{log_tail(log)}")
            time.sleep(READY_POLL_S)
        return Process(name, popen, json.loads(ready.read_text()), log)
    except BaseException:
        stop_process(popen)
        raise


def serve_command(model: Path, endpoints: Endpoints, mode: str = "lossless", engine: str = "auto",
                  precision: str = "auto", threads: int | None = None) -> list[str]:
    """The ``n2n serve`` command line (without ``--ready-file``)."""
    cmd = [sys.executable, "-m", "n2n", "serve", "--model", str(model), "--mode", mode, "--engine", engine,
           "--precision", precision]
    if threads:
        cmd += ["--threads", str(threads)]
    for name in ENDPOINT_NAMES:
        cmd += [f"--{name}-address", getattr(endpoints, name)]
    return cmd


def start_server(model: Path, workdir: Path, mode: str = "lossless", engine: str = "auto", precision: str = "auto",
                 threads: int | None = None, transport: str = "tcp", log_dir: Path | None = None,
                 timeout: float = 180.0) -> Process:
    """A ``n2n serve`` process on this machine only (``Endpoints.local``), ready (its engine compiled).
    Its log is ``serve-MODE-ENGINE-PRECISION.log``."""
    cmd = serve_command(model, Endpoints.local(transport, workdir), mode, engine, precision, threads)
    return spawn(cmd, workdir, f"serve-{mode}-{engine}-{precision}", timeout, log_dir)


def start_echo(workdir: Path, transport: str = "tcp", idle_s: float = 60.0, log_dir: Path | None = None,
               timeout: float = 60.0) -> Process:
    """A ``bench.echo`` process (no model) bound where a local server's request socket would be."""
    address = Endpoints.local(transport, workdir).request
    cmd = [sys.executable, "-m", "bench.echo", "--address", address, "--idle-s", f"{idle_s:g}"]
    return spawn(cmd, workdir, "echo", timeout, log_dir)


def _status_mb(pid: int, field: str) -> float | None:
    """A memory line (``VmRSS``, ``VmHWM``) of a process's /proc status in MiB (None where there is no /proc or
    the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process from /proc (None where there is no /proc or it is gone)."""
    return _status_mb(pid, "VmRSS")


def peak_mb(pid: int) -> float | None:
    """A process's peak resident memory so far (its high-water mark) from /proc."""
    return _status_mb(pid, "VmHWM")
