"""``n2n view``: a napari window with the live widget on a running server; or, with a snapshot path, render
``frames`` frames, save the picture (and the pixels shown beside it, ``.npz``) and exit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ._widget import DENOISED, RAW, DenoiseWidget

__all__ = ["run_view", "write_summary"]

_SUMMARY_EVERY = 10  # ticks of the 100 ms close timer between two writes of the summary file: once a second


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """The viewer's summary as JSON at ``path``, replaced whole (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


def run_view(endpoints: dict[str, str], keys: Any = None, side_by_side: bool = True, snapshot: Path | None = None,
             frames: int = 30, timeout: float = 60.0, summary_path: Path | None = None) -> dict[str, Any]:
    """Open the viewer on ``endpoints`` until its window closes; with ``snapshot``, until ``frames`` frames are
    shown (TimeoutError past ``timeout`` s). Returns the viewer's summary (frames shown, skipped, rate, latency);
    with ``summary_path`` it is also written there once a second while frames are shown (the caller writes the
    last one)."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="n2n-live: raw | denoised", show=True)
    viewer.window.resize(1280, 760)
    widget = DenoiseWidget(viewer, endpoints=endpoints, keys=keys, side_by_side=side_by_side)
    viewer.window.add_dock_widget(widget, name="Live denoising", area="right")
    app: Any = QApplication.instance()
    # Ctrl-C or SIGTERM closes the window as its close button does (from Qt's loop: a timer lets Python look)
    asked = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: asked.set())
    ticks = [0]

    def tick() -> None:
        if asked.is_set():
            viewer.close()
            return
        ticks[0] += 1
        if summary_path is not None and ticks[0] % _SUMMARY_EVERY == 0:
            now = widget.summary()
            if now is not None and now["shown"] > 0:
                with contextlib.suppress(OSError):  # (the last write, by the caller, says why)
                    write_summary(summary_path, now)

    closer = QTimer()
    closer.timeout.connect(tick)
    closer.start(100)
    try:
        if snapshot is None:
            napari.run()
        else:
            if not widget.wait_shown(frames, timeout, app):
                shown = 0 if widget.feed is None else widget.feed.shown_count
                raise TimeoutError(f"{shown} of {frames} frames shown within {timeout:g} s: is the server "
                                   f"at {endpoints['view']} getting frames?")
            _snapshot(viewer, widget, snapshot, app)
    finally:
        closer.stop()
        widget.close_all()
        with contextlib.suppress(RuntimeError):  # (closed by its user already)
            viewer.close()
    summary = widget.summary()
    assert summary is not None
    return summary


def _snapshot(viewer: Any, widget: DenoiseWidget, path: Path, app: Any) -> None:
    """The window as drawn now, and the pixels of both layers with their frame's seq, the canvas as drawn and its
    overlay's text (``PATH.npz``)."""
    widget.freeze()
    for _ in range(5):  # let the canvas draw the last frame
        app.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    assert widget.last is not None
    seq = -1 if widget.last.seq is None else widget.last.seq
    canvas = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    np.savez(path.with_suffix(".npz"), seq=seq, raw=np.asarray(viewer.layers[RAW].data),
             denoised=np.asarray(viewer.layers[DENOISED].data), canvas=canvas,
             overlay=np.asarray(viewer.text_overlay.text))


def have_display() -> bool:
    """Whether Qt can open a window here (Linux: an X or Wayland display; Xvfb counts)."""
    return os.name == "nt" or os.uname().sysname == "Darwin" or bool(os.environ.get("DISPLAY")
                                                                        or os.environ.get("WAYLAND_DISPLAY"))
