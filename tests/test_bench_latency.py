"""The latency benchmark runs against a real `n2n serve` process and its numbers agree with each other where they
measure one moment in two ways (the client's clock and the server's stage stamps, a loop and its calls)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import latency
from bench.processes import spawn

SIZE = 160  # above the server's batch_max_pixels (128²): lossless mode runs one frame per engine call
FRAMES = 12
WARMUP = 10  # bench.latency's warm-up before each measurement


@pytest.fixture(scope="module")
def latency_run(trained_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `bench.latency` command (ipc, one thread), run once for the module: its JSON, table and wall time."""
    out = tmp_path_factory.mktemp("latency") / "bench.json"
    stdout = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        status = latency.main(["--model", str(trained_run["run"]), "--size", str(SIZE), "--frames", str(FRAMES),
                               "--threads", "1", "--transport", "ipc", "--json", str(out)])
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    assert status == 0
    return {"report": json.loads(out.read_text()), "table": stdout.getvalue(), "elapsed_ms": elapsed_ms}


def test_bare_engine_figures_agree_with_each_other(latency_run: dict[str, Any]) -> None:
    """The bare figures are in ms (not s or µs) and agree with each other within the one loop that measured them:
    frames/s over the loop cannot beat the mean call it is made of, nor fall to half of it (the loop adds two clock
    reads per call); and the timed loops fit in the command's own wall time."""
    r = latency_run["report"]
    mean_ms = float(np.mean(r["bare"]["samples_ms"]))

    assert r["engine"] in ("openvino", "onnxruntime", "torch")
    assert 0 < r["bare_ms_p50"] <= r["bare_ms_p99"]
    assert 0.5 * 1000 / mean_ms <= r["bare_fps"] <= 1000 / mean_ms * (1 + 1e-9)
    # at least half of each loop's frames took their median or more: the loops cannot outlast the command
    assert FRAMES / 2 * (r["bare_ms_p50"] + r["e2e_ms_p50"]) <= latency_run["elapsed_ms"]


def test_end_to_end_holds_the_server_work_and_cannot_outrun_the_engine(latency_run: dict[str, Any]) -> None:
    """Each frame's round trip contains the server's own time on that frame (received to sent, its engine call
    among it), so every percentile of the round trips is at least the server's; the sustained frames, by the
    server's own send stamps, came no faster than one engine call each (no batching at this size)."""
    r = latency_run["report"]
    stages, e2e = r["stages_ms_p50"], r["e2e"]

    assert 0 < stages["infer"] <= e2e["server_ms"]["p50"] <= r["e2e_ms_p50"] <= r["e2e_ms_p99"]
    assert e2e["server_ms"]["p99"] <= r["e2e_ms_p99"]
    assert r["lossless_fps"] > 0
    assert 0 < e2e["server_fps"] <= 1000 / e2e["server_infer_ms_mean"] * (1 + 1e-9)


def test_server_reports_every_frame_sent(latency_run: dict[str, Any]) -> None:
    """The lossless server counted in and out exactly the frames the benchmark sent (warm-up, latency loop,
    throughput loop), with nothing dropped and no error."""
    r = latency_run["report"]
    sent = WARMUP + 2 * FRAMES

    assert r["server"]["frames_in"] == r["server"]["frames_out"] == sent
    assert r["server"]["drops"] == 0 and r["server"]["errors"] == 0
    assert (r["server"]["engine"], r["server"]["precision"]) == (r["engine"], r["precision"])
    assert len(r["bare"]["samples_ms"]) == len(r["e2e"]["samples_ms"]) == FRAMES


def test_command_prints_the_table_and_writes_json(latency_run: dict[str, Any]) -> None:
    """The command prints the markdown table and writes the report it describes (ipc transport)."""
    r = latency_run["report"]

    assert r["transport"] == "ipc" and r["frames"] == FRAMES and r["size"] == SIZE
    assert latency_run["table"].strip() == latency.table(r)
    assert f"| bare engine median / p99 | {r['bare_ms_p50']:.2f} / {r['bare_ms_p99']:.2f} ms |" in latency_run["table"]


def test_benchmark_refuses_missing_model(tmp_path: Path) -> None:
    """`python -m bench.latency` on a folder without a model card fails with one error line, not a traceback."""
    proc = subprocess.run([sys.executable, "-m", "bench.latency", "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)

    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "no such model folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_spawn_reports_a_child_that_dies_before_it_is_ready(tmp_path: Path) -> None:
    """A child that exits without writing its ready file: an error with its exit status and its last output."""
    cmd = [sys.executable, "-c", "import sys; print('cannot bind the socket'); sys.exit(3)"]

    with pytest.raises(RuntimeError, match=r"(?s)exited with 3 before it was ready.*cannot bind the socket"):
        spawn(cmd, tmp_path, "dying", timeout=30)
    assert (tmp_path / "dying.log").read_text().strip() == "cannot bind the socket"


def test_spawn_stops_a_child_that_is_never_ready(tmp_path: Path) -> None:
    """A child that never writes its ready file: a timeout naming its output, and the child stopped and reaped."""
    pid_file = tmp_path / "pid"
    cmd = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                 "print('still compiling', flush=True); time.sleep(60)"]

    with pytest.raises(TimeoutError, match=r"(?s)not ready within 2 s.*still compiling"):
        spawn(cmd, tmp_path, "stuck", timeout=2)
    if sys.platform == "linux":
        assert not Path(f"/proc/{pid_file.read_text()}").exists()
