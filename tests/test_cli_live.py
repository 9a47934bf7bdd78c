"""The live commands' wiring: `n2n serve`'s ready file lives only as long as the server, and the one bridge
function `n2n bridge` and `n2n demo` share ends on frames, time or a stop, saying which."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tifffile
import yaml

from n2n.bridging import bridge_live, read_ready_file
from streamer.endpoints import ENDPOINT_NAMES, Endpoints
from streamer.micromanager import SIM_CFG
from streamer.micromanager.config import MicroManagerSourceConfig
from streamer.server import ServeConfig

SIZE = 64
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.fixture
def sim64(tmp_path: Path) -> Path:
    """The simulated Micro-Manager session at 64×64, 2 ms exposure."""
    path = tmp_path / "sim64.cfg"
    path.write_text(SIM_CFG.replace("Width,512", f"Width,{SIZE}").replace("Height,512", f"Height,{SIZE}")
                    .replace("Exposure,10.0", "Exposure,2.0"))
    return path


def _serve_config(mode: str) -> ServeConfig:
    return ServeConfig(mode=mode, num_threads=1, precision="fp32", endpoints=Endpoints.local())


def test_serve_removes_its_ready_file(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """The ready file appears once the server answers and is gone when it exits (SIGTERM: status 0)."""
    ready = tmp_path / "ready.json"
    addresses = [a for name in ENDPOINT_NAMES
                 for a in (f"--{name}-address", "tcp://127.0.0.1:*")]
    proc = subprocess.Popen([sys.executable, "-m", "n2n", "serve", "--model", str(trained_run["run"]), "--threads",
                             "1", "--precision", "fp32", *addresses, "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert set(read_ready_file(ready)) == set(ENDPOINT_NAMES)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert not ready.exists() and not ready.with_name("ready.json.tmp").exists()
    assert "warning:" not in stderr


def test_bridge_command_with_the_serve_options(trained_run: dict[str, Path], sim64: Path, tmp_path: Path) -> None:
    """`n2n bridge` (a real process) with --precision/--threads: every frame denoised and saved, not interrupted."""
    mm = tmp_path / "mm.yaml"
    mm.write_text(yaml.safe_dump({"version": 1, "serve": {"endpoints": Endpoints.local().model_dump()}}))
    out, report_path = tmp_path / "b.ome.tif", tmp_path / "b.json"
    proc = subprocess.run([sys.executable, "-m", "n2n", "bridge", "--config", str(mm), "--model",
                           str(trained_run["run"]), "--mm-config", str(sim64), "--frames", "12", "--mode", "lossless",
                           "--precision", "fp32", "--threads", "1", "--out", str(out), "--json", str(report_path)],
                          capture_output=True, text=True, env=ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert report["frames_seen"] == report["frames_denoised"] == 12 and not report["interrupted"]
    assert tifffile.imread(out).shape == (12, 2, SIZE, SIZE)
    assert "fp32" in proc.stderr and "frames seen" in proc.stdout


def test_bridge_for_a_time_is_not_interrupted(trained_run: dict[str, Path], sim64: Path) -> None:
    """A bridge that ends after its planned seconds is not reported as interrupted (the demo's live stage)."""
    run = bridge_live(MicroManagerSourceConfig(config_file=str(sim64)), model=trained_run["run"],
                      serve=_serve_config("live"), seconds=1.0, view="none")

    assert not run.stopped and not run.report.interrupted
    assert run.report.frames_seen > 0 and run.server is not None and run.status is not None
    assert run.report.frames_seen == run.report.frames_denoised + run.report.frames_dropped


def test_bridge_stopped_by_the_caller(trained_run: dict[str, Path], sim64: Path) -> None:
    """The caller's stop ends a bridge with no planned end: reported as stopped and interrupted."""
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    try:
        run = bridge_live(MicroManagerSourceConfig(config_file=str(sim64)), model=trained_run["run"],
                          serve=_serve_config("live"), view="none", stop=stop)
    finally:
        timer.cancel()

    assert run.stopped and run.report.interrupted and run.report.frames_seen > 0


def test_ready_file_errors_name_the_file(tmp_path: Path) -> None:
    """A file that is not a ready file is refused, naming it and what it lacks."""
    bad = tmp_path / "ready.json"
    bad.write_text(json.dumps({"endpoints": {"input": "tcp://127.0.0.1:1"}}))

    with pytest.raises(ValueError, match=rf"{bad}: expected 'endpoints' with input, output and control, got no "
                                         "control, output"):
        read_ready_file(bad)


def test_the_bridge_serves_a_model_set_by_the_cores_channel(trained_run: dict[str, Path], tmp_path: Path) -> None:
    """A session whose channel group is at GFP: a set with a GFP model denoises every frame; a set naming only DAPI
    passes every frame raw, marked raw:no_model and counted (nothing dropped, nothing mis-served)."""
    cfg = tmp_path / "gfp.cfg"
    cfg.write_text(SIM_CFG.replace("Width,512", f"Width,{SIZE}").replace("Height,512", f"Height,{SIZE}")
                   + "#py Property,Emission,Label,GFP\n")
    source = MicroManagerSourceConfig(config_file=str(cfg))
    served = bridge_live(source, model=[f"GFP={trained_run['run']}"], serve=_serve_config("lossless"), frames=4,
                         view="none")
    assert served.report.frames_seen == served.report.frames_denoised == 4
    assert served.status is not None and not served.status.get("no_model")
    passed = bridge_live(source, model=[f"DAPI={trained_run['run']}"], serve=_serve_config("lossless"), frames=4,
                         view="none")
    assert passed.report.frames_seen == 4 and passed.report.frames_denoised == 0
    assert passed.report.frames_kept_raw == 4
    assert passed.status is not None and passed.status["no_model"] == {"GFP": 4}
