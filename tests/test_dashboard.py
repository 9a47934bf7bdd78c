"""The live dashboard (``n2n dash``): rendering to a recording 80×24 console, the sparkline and
history, the CPU meter, and the live loop against a real server, a silent address and a
publisher sending bad messages (real ZeroMQ sockets on 127.0.0.1, no mocks)."""

from __future__ import annotations

import _thread
import io
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from serverkit import stats_publisher
from waiting import GENEROUS_S, Finishing, wait_for

from streamer.client import ServerError, StreamClient
from streamer.dashboard import (
    SPARK_CHARS,
    CpuMeter,
    GpuMeter,
    History,
    render,
    run_dashboard,
    sparkline,
)
from streamer.endpoints import Endpoints
from streamer.server import ServeConfig, running_server
from streamer.sources import SimulatedCameraConfig, simulate_stack

ADDRESS = "tcp://127.0.0.1:5558"


def recording_console() -> Console:
    """An 80×24 terminal without colours that keeps everything printed (and writes nowhere)."""
    return Console(record=True, width=80, height=24, force_terminal=True, color_system=None, file=io.StringIO())


def shown(renderable: Any) -> str:
    console = recording_console()
    console.print(renderable)
    return console.export_text()


def sample_stats(**overrides: Any) -> dict[str, Any]:
    """A stats message as the server publishes it (see ServerStats.snapshot and Server.status)."""
    stats: dict[str, Any] = {
        "v": 1, "type": "stats", "time_ns": time.time_ns(), "uptime_s": 3723.4,
        "frames_in": 12345, "frames_out": 12300, "requests": 10, "fps_in": 30.04, "fps_out": 29.91,
        "latency_ms": {"p50": 12.34, "p95": 15.61, "p99": 20.06},
        "server_ms": {"p50": 10.21, "p95": 12.12, "p99": None},
        "stages_ms": {"queue": 0.12, "preprocess": 0.24, "infer": 9.87, "postprocess": 0.31, "send": None},
        "drops": 45, "drop_fraction": 0.0036, "errors": 3, "errors_by_kind": {"not_finite": 1, "bad_shape": 2},
        "queue_depth": 1, "swaps": 0, "mode": "live", "subscribers": 2,
        "engine": "openvino", "precision": "fp32", "precision_note": "bf16 kept out: 41.2 dB < 50 dB",
        "device": "cpu", "model": "tinyrun", "shapes": [[1, 1, 64, 64]],
        "endpoints": {"stats": ADDRESS},
    }
    stats.update(overrides)
    return stats


def assert_fits(text: str) -> None:
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= 24, text
    assert max(len(line) for line in lines) <= 80, text


def free_tcp_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


# --- rendering ---------------------------------------------------------------------------------------------
def test_render_shows_the_figures_sent_in_80x24() -> None:
    history = History()
    for i in range(120):  # two minutes at 2 Hz, 15 frames each time (30 fps): only the last one is kept
        history.add(sample_stats(latency_ms={"p50": 10.0 + i % 7}, uptime_s=100.0 + 0.5 * i, frames_in=15 * i,
                                 frames_out=15 * i), now=100.0 + 0.5 * i)
    text = shown(render(sample_stats(), history, ADDRESS, seconds_since_last=0.4, cpu_percent=23.4,
                        gpu="GPU 45 % 1.2/79.6 GiB"))

    assert_fits(text)
    assert f"n2n dash · {ADDRESS}" in text
    assert re.search(r"tinyrun\s+·\s+openvino fp32 on cpu\s+·\s+live mode\s+·\s+up 1:02:03", text), text
    assert "bf16 kept out: 41.2 dB < 50 dB" in text
    assert re.search(r"frame rate\s+in 30\.0 fps\s+out 30\.0 fps", text), text  # counted here, not the server's
    assert re.search(r"latency\s+p50 12\.3 ms\s+p95 15\.6 ms\s+p99 20\.1 ms", text), text
    assert re.search(r"in server\s+p50 10\.2 ms\s+p95 12\.1 ms\s+p99 –", text), text
    assert re.search(r"queue\s+preprocess\s+infer\s+postprocess\s+send\s*│?\n│?\s+0\.1\s+0\.2\s+9\.9\s+0\.3\s+–",
                     text), text
    assert re.search(r"frames\s+in 12345\s+out 12300\s+requests 10\s+swaps 0", text), text
    assert re.search(r"drops\s+45 \(0\.4 %\)\s+queue depth 1\s+subscribers 2", text), text
    assert re.search(r"errors\s+3\s+\(bad_shape 2, not_finite 1\)", text), text  # most frequent kind first
    assert re.search(r"load\s+CPU 23 %\s+GPU 45 % 1\.2/79\.6 GiB", text), text
    assert "updated 0.4 s ago" in text and "Ctrl-C quits" in text
    assert "no stats for" not in text

    spark = re.search(r"p50, 1 min\s+(\S+)\s+10\.0–16\.0 ms", text)
    assert spark, text
    assert set(spark.group(1)) <= set(SPARK_CHARS) and "▁" in spark.group(1) and "█" in spark.group(1)


def test_render_without_figures_and_unknown_values() -> None:
    """Nulls, a missing section and wrong types show '–' instead of failing; no GPU, no GPU text; before a second
    message the rates and without a reading the CPU say so in words."""
    stats = sample_stats(latency_ms={"p50": None, "p95": None, "p99": None}, fps_in=None, stages_ms="?",
                         errors=0, errors_by_kind={}, drops=0, drop_fraction=0.0)
    del stats["server_ms"], stats["precision_note"]
    text = shown(render(stats, History(), ADDRESS))
    assert_fits(text)
    assert re.search(r"latency\s+p50 –\s+p95 –\s+p99 –", text), text
    assert re.search(r"in server\s+p50 –\s+p95 –\s+p99 –", text), text
    assert re.search(r"frame rate\s+measuring \(from the second stats message on\)", text), text
    assert re.search(r"drops\s+0 \(0\.0 %\)", text) and re.search(r"errors\s+0\s*│", text), text
    assert re.search(r"load\s+CPU not measured yet\s*│", text) and "GPU" not in text, text


def test_render_waiting_for_server() -> None:
    text = shown(render(None, History(), "tcp://127.0.0.1:6001", seconds_since_last=3.2))
    assert_fits(text)
    assert "waiting for server at tcp://127.0.0.1:6001 … 3 s" in text
    assert "frame rate" not in text
    assert "waiting for server at tcp://127.0.0.1:6001" in shown(render(None, History(), "tcp://127.0.0.1:6001"))


def test_render_warns_when_stats_are_stale() -> None:
    history = History()
    history.add(sample_stats(), now=5.0)
    text = shown(render(sample_stats(), history, ADDRESS, seconds_since_last=7.6))
    assert_fits(text)
    assert "no stats for 8 s" in text
    assert re.search(r"latency\s+p50 12\.3 ms", text), text  # the last figures stay
    assert "no stats for" not in shown(render(sample_stats(), history, ADDRESS, seconds_since_last=1.9))


# --- sparkline and history ---------------------------------------------------------------------------------
def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == SPARK_CHARS
    line = sparkline([3.0, None, 10.0, 5.0], 4)
    assert len(line) == 4 and line[0] == "▁" and line[1] == " " and line[2] == "█"
    assert all(len(sparkline(list(range(n)), w)) == w for n in (1, 5, 60, 1000) for w in (1, 7, 44))
    assert sparkline(list(range(1000)), 10)[0] == "▁" and sparkline(list(range(1000)), 10)[-1] == "█"
    assert sparkline([1.0, 2.0], 6) == "▁▁▁███"  # stretched
    assert sparkline([], 5) == " " * 5 and sparkline([None, None], 3) == "   "
    assert sparkline([4.0, 4.0, 4.0], 3) == "▁▁▁"  # constant: flat
    assert sparkline([1.0, float("nan"), 2.0], 3) == "▁ █"
    assert sparkline([1.0], 0) == ""


def test_history_keeps_the_last_minute_in_time_bins() -> None:
    history = History(window_s=60)
    for t in range(0, 100, 2):  # 10 frames/s served (the server's own figure is not what the dashboard shows)
        history.add({"latency_ms": {"p50": float(t)}, "fps_out": 3.0, "frames_out": 10 * t}, now=float(t))
    assert history.times[0] >= 98 - 60 and history.times[-1] == 98 and len(history) == len(history.times)
    assert history.latency_p50[-1] == 98.0 and history.fps_out == [10.0] * len(history)
    series = history.series("latency_p50", 30)
    assert len(series) == 30 and series[-1] == 97.0 and series[0] is not None and series[0] < 42
    assert series == sorted(series)  # type: ignore[type-var]
    assert history.range("latency_p50") == (38.0, 98.0)
    # a sample without figures and a gap: empty bins are None, shown as spaces
    history.add({"latency_ms": {"p50": None}}, now=130.0)
    late = history.series("latency_p50", 6)
    assert late[-1] is None and late[0] is not None
    assert History().series("fps_out", 4) == [None] * 4 and History().range("fps_out") is None
    with pytest.raises(ValueError, match="unknown series"):
        history.series("drops", 4)


def test_cpu_meter_reads_proc_stat_deltas(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    meter = CpuMeter(str(stat))  # the baseline: the first reading already measures
    stat.write_text("cpu  130 0 120 840 10 0 0 0 0 0\n")  # +50 busy, +50 idle (iowait counts as idle)
    assert meter.percent() == pytest.approx(50.0) and meter.why_not is None
    assert CpuMeter(str(tmp_path / "missing")).percent() is None
    if Path("/proc/stat").exists():
        real = CpuMeter()
        real.percent()
        time.sleep(0.05)
        value = real.percent()
        assert value is None or 0.0 <= value <= 100.0


def test_gpu_meter_is_optional() -> None:
    meter = GpuMeter()
    try:
        value = meter.read()
        assert value is None or value.startswith("GPU ")
    finally:
        meter.close()


# --- the live loop -----------------------------------------------------------------------------------------
def test_run_dashboard_shows_a_real_server(trained_run: dict[str, Path]) -> None:
    config = ServeConfig(endpoints=Endpoints.local(), num_threads=1,
                         precision="fp32", stats_interval_s=0.1)
    frame = simulate_stack(SimulatedCameraConfig(height=64, width=64, exposure_ms=10.0, seed=3), 1)[0][0]
    nan_frame = frame.astype(np.float32)
    nan_frame[0, 0] = np.nan
    console = recording_console()
    with running_server(trained_run["run"], config) as server, StreamClient(server.endpoints) as client:
        for _ in range(4):
            client.request(frame)
        with pytest.raises(ServerError):
            client.request(nan_frame)
        status = client.status()
        assert status["frames_in"] == 5 and status["frames_out"] == 4
        stop = threading.Event()
        dash = Finishing("the dashboard", run_dashboard, server.endpoints["stats"], console=console,
                         refresh_per_second=8, stop=stop)
        wait_for(lambda: "requests 4" in console.export_text(clear=False), "the dashboard to show the server's "
                 "counts", timeout=GENEROUS_S)
        stop.set()
        code = dash.result()
    assert code == 0
    text = console.export_text()
    assert f"{status['engine']} fp32 on {status['device']}" in text
    assert re.search(rf"frames\s+in {status['frames_in']}\s+out {status['frames_out']}\s+requests 4", text), text
    assert re.search(r"errors\s+1\s+\(not_finite 1\)", text), text
    assert "no stats for" not in text


def test_run_dashboard_waits_when_nothing_listens() -> None:
    address = free_tcp_address()
    console = recording_console()
    assert Finishing("the dashboard's 0.5 s", run_dashboard, address, console=console, duration_s=0.5).result() == 0
    assert f"waiting for server at {address}" in console.export_text()


def test_run_dashboard_ignores_bad_messages_and_stops_on_request() -> None:
    good = json.dumps(sample_stats(frames_in=777, engine="onnxruntime")).encode()
    stop = threading.Event()
    console = recording_console()

    def shown_both() -> bool:
        text = console.export_text(clear=False)
        return "bad messages ignored" in text and re.search(r"frames\s+in 777\b", text) is not None

    with stats_publisher([b"{not json"], [b"[1, 2]"], [good, b"extra part"], [good]) as address:
        # no duration: only the stop ends it
        dash = Finishing("the dashboard, asked to stop,", run_dashboard, address, console=console, stop=stop)
        wait_for(shown_both, "the dashboard to show the good message and count the bad ones", timeout=GENEROUS_S)
        stop.set()
        code = dash.result()
    assert code == 0
    text = console.export_text()
    assert "onnxruntime fp32 on cpu" in text and re.search(r"frames\s+in 777\b", text), text
    assert re.search(r"\d+ bad messages ignored", text), text


def test_run_dashboard_quits_cleanly_on_ctrl_c() -> None:
    """Ctrl-C (in the main thread, where it arrives) ends it with 0; no duration, and a backstop stop that must not
    be what ended it."""
    backstop = threading.Event()
    timers = [threading.Timer(0.3, _thread.interrupt_main), threading.Timer(GENEROUS_S, backstop.set)]
    console = recording_console()
    for timer in timers:
        timer.start()
    try:
        assert run_dashboard(free_tcp_address(), console=console, stop=backstop) == 0
    finally:
        for timer in timers:
            timer.cancel()
    assert not backstop.is_set(), "Ctrl-C did not end the dashboard"
    assert "waiting for server at" in console.export_text()


def test_run_dashboard_rejects_a_malformed_address() -> None:
    console = recording_console()
    assert run_dashboard("nonsense://here", console=console, duration_s=0.2) == 2
    assert "cannot connect to 'nonsense://here'" in console.export_text()
