"""`n2n bench` and `n2n dash` as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100", "MPLBACKEND": "Agg"}


@pytest.mark.slow  # the suite itself is measured in tests/test_bench_suite.py; this is the command around it
def test_bench_command(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """`n2n bench` on a tiny model writes the JSON with its headline figures, a report folder and a table."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "n2n", "bench", "--model", str(trained_run["run"]), "--size", "64",
                           "--engine", "onnxruntime", "--frames", "6", "--overload-s", "1", "--threads", "1",
                           "--json", str(out), "--report", str(tmp_path / "report")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("engine", "bare_ms_p50", "e2e_ms_p50", "e2e_ms_p99", "lossless_fps", "bare_fps",
                "live_overload_p99_ms", "live_drop_fraction"):
        assert key in report, key
    assert report["engine"] == "onnxruntime" and 0 <= report["live_drop_fraction"] <= 1
    assert report["e2e_ms_p50"] <= report["e2e_ms_p99"]
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "latency_cdf.png").is_file()
    assert "| engine |" in proc.stdout
    assert "warning:" not in proc.stderr and "Traceback" not in proc.stderr


def test_bench_command_refuses_a_missing_model(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "n2n", "bench", "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: {tmp_path / 'nope'}: no such model folder (make one with `n2n train`)"]


def _dash_until_ctrl_c(args: Callable[[str], list[str]]) -> tuple[int, str, str, str]:
    """`n2n dash` with ``args(address)`` against an XPUB socket at ``address``, standing where the server's stats
    would be: once its subscription shows the dashboard is listening, Ctrl-C. Exit status, stdout, stderr and the
    address."""
    import zmq

    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)
    address = f"tcp://127.0.0.1:{xpub.bind_to_random_port('tcp://127.0.0.1')}"
    proc = subprocess.Popen([sys.executable, "-m", "n2n", "dash", *args(address)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert xpub.poll(60_000), "the dashboard never subscribed"
        assert xpub.recv()[:1] == b"\x01"  # subscribed: it is up and waiting for statistics
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        xpub.close(linger=0)
        ctx.term()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, stderr, address


def test_dash_connects_through_a_ready_file(tmp_path: Path) -> None:
    """`n2n dash --connect READY_FILE` watches the stats address the server wrote there (its subscription reaches
    the socket standing in for the server's stats); a ready file without one is a one-line error."""
    ready = tmp_path / "serve.json"

    def connect(address: str) -> list[str]:  # the ready file names the stand-in's address, known once it is bound
        ready.write_text(json.dumps({"endpoints": {"input": "tcp://127.0.0.1:1", "output": "tcp://127.0.0.1:2",
                                                   "control": "tcp://127.0.0.1:3", "stats": address}}))
        return ["--connect", str(ready)]

    code, stdout, stderr, address = _dash_until_ctrl_c(connect)
    assert code == 0, stderr
    assert f"waiting for server at {address}" in " ".join(stdout.split())

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    refused = subprocess.run([sys.executable, "-m", "n2n", "dash", "--connect", str(bad)], capture_output=True,
                             text=True, env=ENV, timeout=60)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith(f"error: --connect: {bad}: expected the JSON")


def test_dash_command_waits_then_quits_on_ctrl_c() -> None:
    """`n2n dash` with no server says it is waiting, and Ctrl-C ends it with status 0. (An XPUB socket stands
    where the server's stats would be: its subscription tells the test that the dashboard is listening.)"""
    code, stdout, stderr, address = _dash_until_ctrl_c(lambda address: ["--stats-address", address])
    assert code == 0, stderr
    assert f"waiting for server at {address}" in " ".join(stdout.split())
    assert "Traceback" not in stderr
