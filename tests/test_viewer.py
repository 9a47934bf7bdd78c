"""`n2n view` and the napari widget for real: napari under Xvfb (a virtual X display, Debian's ``xvfb``) in a
process of its own, watching a real server on 127.0.0.1 that denoises simulated camera frames; and the widget
inside napari-micromanager on the simulated in-process core. Skipped, with the reason, without napari (the
``viewer`` extra) or Xvfb."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serverkit import camera_frames, config
from waiting import GENEROUS_S

from streamer.client import StreamClient
from streamer.server import running_server

ROOT = Path(__file__).resolve().parent.parent
HAVE_NAPARI = importlib.util.find_spec("napari") is not None
needs_napari = pytest.mark.skipif(not HAVE_NAPARI, reason="napari not installed (pip install -e '.[viewer]')")


@pytest.fixture(scope="module")
def run(trained_run: dict[str, Path]) -> Path:
    return trained_run["run"]


def test_without_napari_view_says_how_to_install_it() -> None:
    code = "import sys; sys.modules['napari'] = None; from n2n.cli import main; main(['view'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: n2n view needs napari and Qt: in your n2n-live checkout, with its "
                                   "environment active, pip install -e '.[viewer]'")
    assert "Traceback" not in proc.stderr


def test_missing_qt_libraries_are_named_by_their_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check the loader does: a library it cannot find is named by its package; one it finds (libc, on every
    Linux) is not; under another Qt platform nothing is checked."""
    from n2n.commands.viewer import missing_qt_libraries

    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    wanted = {"c": "libc6", "n2n-no-such-library-xyz": "libn2n-nothing0"}
    assert missing_qt_libraries(wanted) == (["libn2n-nothing0"] if sys.platform.startswith("linux") else [])
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert missing_qt_libraries(wanted) == []


@needs_napari
def test_without_a_display_view_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "n2n", "view"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)
    assert proc.returncode == 2
    assert "error: n2n view needs a display" in proc.stderr and "xvfb-run -a n2n view" in proc.stderr


@needs_napari
def test_view_shows_raw_and_denoised_of_the_same_frame(run: Path, tmp_path: Path, display: dict[str, str]) -> None:
    """A real napari window on a real server: the layers update, the denoised layer holds the server's output for
    the frame's seq and the raw layer the frame the camera sent; the snapshot is a picture of them."""
    frames = camera_frames(8, size=64)
    sent: dict[int, np.ndarray] = {}
    outputs: dict[int, np.ndarray] = {}
    stop = threading.Event()
    with running_server(run, config(mode="lossless")) as server, \
            StreamClient(server.endpoints, timeout=5) as producer, StreamClient(server.endpoints) as consumer:
        consumer.wait_subscribed()

        def produce() -> None:  # a camera at about 50 frames/s, and a subscriber that keeps every output
            seq = 0
            while not stop.is_set():
                sent[seq] = frames[seq % len(frames)]
                producer.send(sent[seq], seq=seq)
                result = consumer.receive(timeout=10)
                outputs[result.seq] = result.pixels.copy()
                seq += 1
                stop.wait(0.02)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        snap, summary_path = tmp_path / "view.png", tmp_path / "view.json"
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "n2n", "view", "--view-address", server.endpoints["view"], "--stats-address",
                 server.endpoints["stats"], "--snapshot", str(snap), "--frames", "15", "--timeout", "90",
                 "--json", str(summary_path)], capture_output=True, text=True, timeout=180, env=display, cwd=ROOT)
        finally:
            stop.set()
            thread.join(timeout=20)
        status = consumer.status()

    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = np.load(tmp_path / "view.npz")
    seq = int(shown["seq"])
    np.testing.assert_array_equal(shown["raw"], sent[seq])
    np.testing.assert_array_equal(shown["denoised"], outputs[seq])
    assert not np.array_equal(shown["denoised"], shown["raw"])
    # the canvas says which image is which, and it is so: the noisy (raw) half is the rougher one
    assert str(shown["overlay"]).startswith("raw (left) | denoised (right)")
    canvas = shown["canvas"][..., :3].astype(np.float64).mean(axis=-1)
    half = canvas.shape[1] // 2

    def roughness(a: np.ndarray) -> float:
        return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())

    assert roughness(canvas[:, :half]) > roughness(canvas[:, half:])
    summary = json.loads(summary_path.read_text())
    assert summary["shown"] >= 15 and summary["display_fps"] > 0 and summary["bad"] == 0
    assert summary["shown"] + summary["skipped"] <= status["view_frames"]
    from PIL import Image

    picture = np.asarray(Image.open(snap).convert("L"), dtype=np.float64)
    assert picture.shape[0] > 300 and picture.shape[1] > 500 and picture.std() > 10  # a window, not a blank
    assert "frames shown at" in proc.stderr


@needs_napari
def test_the_widget_denoises_napari_micromanagers_live_preview(run: Path, tmp_path: Path,
                                                               display: dict[str, str]) -> None:
    """Inside napari-micromanager (simulated in-process core): live in Micro-Manager, and a denoised layer beside
    the preview, computed by a server the widget started, equal to the model's output for the frame shown."""
    if importlib.util.find_spec("napari_micromanager") is None:
        pytest.skip("napari-micromanager not installed (pip install -e '.[viewer]')")
    png, report = tmp_path / "mm.png", tmp_path / "mm.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "napari_mm.py"), str(run), str(png), str(report), "8"],
                          capture_output=True, text=True, timeout=240, env=display, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(report.read_text())
    assert got["shown"] is True
    assert {"preview", "raw (n2n)", "denoised (n2n)"} <= set(got["layers"])
    assert got["raw_is_a_preview"] is True  # the raw layer is a frame napari-micromanager previewed
    assert got["denoised_max_diff"] == 0.0 and got["denoised_differs_from_raw"] is True
    assert got["pushed"] >= 8 and got["summary"]["shown"] >= 8
    assert png.stat().st_size > 10_000


@needs_napari
def test_the_widget_routes_each_channel_of_the_preview_to_its_model(run: Path, tmp_path: Path,
                                                                    display: dict[str, str]) -> None:
    """A models.yaml in the widget (issue 32): it shows which channel goes to which model; the preview imaged in DAPI
    goes with its channel (napari-micromanager's core's Channel preset) and comes back denoised by the DAPI model;
    switched live to GFP, which the set has no model for, its frames come back raw, counted by the server."""
    if importlib.util.find_spec("napari_micromanager") is None:
        pytest.skip("napari-micromanager not installed (pip install -e '.[viewer]')")
    (tmp_path / "models.yaml").write_text(f"channels:\n  DAPI: {run}\n")
    png, report = tmp_path / "mm.png", tmp_path / "mm.json"
    script = str(ROOT / "tests" / "napari_mm.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path / "models.yaml"), str(png), str(report), "6", "96",
                           "DAPI", "GFP"], capture_output=True, text=True, timeout=240, env=display, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(report.read_text())
    assert got["routes"].splitlines() == [f"DAPI → {run.name}", "any other channel → raw (no model)",
                                          "each frame's channel: the core's 'Channel' group"]
    assert got["shown"] is True and got["denoised_max_diff"] == 0.0 and got["denoised_differs_from_raw"] is True
    assert got["then_shown_raw"] is True and got["then_no_model"] > 0
    assert "kept raw, no model for: GFP (" in got["status"]


def test_the_widget_takes_a_model_folder_or_a_model_set(run: Path, tmp_path: Path) -> None:
    """What the widget's Model field takes (no Qt needed): a folder is a set of one, a models.yaml a model per
    channel, shown one channel a line; a folder without model.json or a set naming one is refused, in one line."""
    from streamer.core.modelset import ModelSetError
    from streamer.napari_plugin._routes import describe_routes, model_set

    assert describe_routes(model_set(f"  {run}  ")) == f"every channel → {run.name}"
    (tmp_path / "models.yaml").write_text(f"channels:\n  DAPI: {run}\n  GFP: {run}\ndefault: {run}\n")
    assert describe_routes(model_set(str(tmp_path / "models.yaml"))).splitlines() == [
        f"DAPI → {run.name}", f"GFP → {run.name}", f"any other channel → {run.name}"]
    (tmp_path / "bad.yaml").write_text(f"channels:\n  DAPI: {run}\n  GFP: {tmp_path}\n")
    folder = f"got {str(tmp_path)!r}"
    for text, why in [(str(tmp_path), folder), (str(tmp_path / "bad.yaml"), folder),
                      (str(tmp_path / "nowhere"), "nowhere"), ("", "got nothing")]:
        with pytest.raises(ModelSetError, match=r"expected a model folder with model\.json") as err:
            model_set(text)
        assert why in str(err.value)


@needs_napari
def test_the_viewer_benchmark_reports_consistent_numbers(run: Path, tmp_path: Path, display: dict[str, str]) -> None:
    """bench.viewer on small frames: rates for each case, napari's frames shown at a positive rate, and numbers
    that agree with each other (shown + skipped within what the server published to viewers)."""
    report_path = tmp_path / "viewer.json"
    proc = subprocess.run([sys.executable, "-m", "bench.viewer", "--model", str(run), "--size", "64", "--trials", "1",
                           "--shown", "10", "--threads", "1", "--precision", "fp32", "--json", str(report_path)],
                          capture_output=True, text=True, timeout=300, env=display, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(report_path.read_text())["sizes"]
    assert row["size"] == 64 and row["server_drops"] == 0
    assert row["server_fps"]["alone"] > 0 and row["server_fps"]["stalled"] > 0
    assert row["stalled_over_alone"] == pytest.approx(row["server_fps"]["stalled"] / row["server_fps"]["alone"],
                                                      abs=0.01)
    assert row["camera_fps"] == pytest.approx(min(100.0, 0.8 * row["server_fps"]["alone"]), abs=0.1)  # 80%, ≤ 100
    assert row["server_fps_with_napari"] > 0
    assert row["napari_shown"] >= 10 and row["napari_display_fps"] > 0
    assert row["napari_shown"] + row["napari_skipped"] <= row["view_frames"]
    assert 0 < row["napari_latency_ms"]["p50"] <= row["napari_latency_ms"]["p99"]


@needs_napari
def test_demo_view_opens_napari_on_the_live_stage_and_reads_back_its_numbers(run: Path, tmp_path: Path,
                                                                             display: dict[str, str],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What `n2n demo --view` does around its live stage: n2n view on the stage's server, closed (SIGTERM) when the
    stage ends, its summary in the report."""
    from rich.console import Console

    from n2n.demo import _Viewer

    for key, value in display.items():
        monkeypatch.setenv(key, value)
    frames = camera_frames(4, size=64)
    summary_path = tmp_path / "viewer.json"

    def napari_has_shown_frames() -> bool:  # n2n view rewrites its summary once a second while it shows frames
        return summary_path.is_file() and json.loads(summary_path.read_text())["shown"] > 0

    with running_server(run, config(mode="live")) as server, StreamClient(server.endpoints) as client:
        with _Viewer(summary_path, Console(stderr=True)) as viewer:
            viewer.open(None, server.endpoints, None)
            deadline = time.monotonic() + GENEROUS_S
            i = 0
            while not napari_has_shown_frames():  # the stage's frames, until napari shows them
                assert time.monotonic() < deadline, f"napari showed no frame of {i} sent"
                client.send(frames[i % 4])
                i += 1
                time.sleep(0.02)
        assert viewer.proc is not None and viewer.proc.returncode == 0
    assert viewer.summary is not None and viewer.summary["shown"] > 0 and viewer.summary["display_fps"] >= 0


@needs_napari
def test_napari_finds_the_widget_through_the_plugin_entry_point() -> None:
    """The installed package's npe2 manifest: napari lists the widget and its command imports the class."""
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "from npe2 import PluginManager\n"
            "pm = PluginManager(); pm.discover()\n"
            "mf = pm.get_manifest('n2n-live')\n"
            "(w,) = mf.contributions.widgets\n"
            "(c,) = [c for c in mf.contributions.commands if c.id == w.command]\n"
            "from streamer.napari_plugin import DenoiseWidget\n"
            "print(w.display_name, c.python_name, c.python_name.endswith(':' + DenoiseWidget.__name__))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["Live", "denoising", "streamer.napari_plugin._widget:DenoiseWidget", "True"]
