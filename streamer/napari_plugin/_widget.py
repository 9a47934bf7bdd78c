"""The napari widget: raw and denoised frames of a live stream, side by side or overlaid, with the dashboard's key
numbers. It watches a running server (``n2n view``), or starts one in this process on a model set (a model folder:
a set of one; or a ``models.yaml``, a model per channel, see :mod:`streamer.core.modelset`) and denoises the frames
another plugin shows live in an image layer: napari-micromanager's ``preview`` by default. Each frame goes with its
channel, the Micro-Manager core's current configuration of its channel group (as ``n2n bridge`` sends it), so the
set routes it to its channel's model; the core is napari-micromanager's in this viewer, or the one given."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from streamer.core.choices import ENGINE_CHOICES, PRECISION_CHOICES
from streamer.core.modelset import ModelSet, ModelSetError
from streamer.viewer import ViewFeed, ViewFrame

from ._routes import describe_routes, model_set

if TYPE_CHECKING:
    from streamer.micromanager.bridge import FrameChannels
    from streamer.server import ServerThread

__all__ = ["DenoiseWidget"]

log = logging.getLogger("n2n.viewer")

RAW, DENOISED = "raw (n2n)", "denoised (n2n)"


def _contrast(a: np.ndarray) -> tuple[float, float]:
    """Display limits for a frame: its 0.1 and 99.9 percentiles (of a subsample), never empty."""
    sample = a[:: max(1, a.shape[0] // 256), :: max(1, a.shape[1] // 256)]
    lo, hi = (float(v) for v in np.percentile(sample, (0.1, 99.9)))
    return lo, hi if hi > lo else lo + 1.0


def local_server(model: Path | ModelSet, engine: str, precision: str) -> ServerThread:
    """A denoising server in a thread of this process (live mode, loopback ports the system picks), started
    without blocking the interface: compiling takes seconds. ``error`` says why it failed, if it did."""
    from streamer.endpoints import Endpoints
    from streamer.server import ServeConfig, Server, ServerThread  # (not at import: napari lists plugins first)

    config = ServeConfig(mode="live", engine=engine, precision=precision, endpoints=Endpoints.local())  # type: ignore[arg-type]
    return ServerThread(lambda: Server(model, config), background=True, name="n2n-napari-server")


class DenoiseWidget(QWidget):
    """Raw | denoised, live. ``endpoints``: a running server's addresses (its ready file's ``endpoints``) to watch
    at once; ``source``: the image layer whose updates a server started here denoises."""

    def __init__(self, napari_viewer: Any, endpoints: dict[str, str] | None = None, keys: Any = None,
                 source: str = "preview", side_by_side: bool = True, core: Any = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.keys = keys
        self.core = core  # whose channel group names each frame's channel (None: napari-micromanager's, if any)
        self.models: ModelSet | None = None
        self._channels: FrameChannels | None = None
        self.feed: ViewFeed | None = None
        self.local: ServerThread | None = None
        self._client: Any = None
        self._source_layer: Any = None
        self.pushed = 0  # frames of the source layer sent to the local server
        self.last: ViewFrame | None = None
        self.final_summary: dict[str, Any] | None = None
        self._build(source, side_by_side)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._timer.start(10)
        if endpoints is not None:
            self.connect_to(endpoints)

    # --- the interface ---------------------------------------------------------------------------
    def _build(self, source: str, side_by_side: bool) -> None:
        self.address = QLineEdit("tcp://127.0.0.1:5560")
        self.address.setToolTip("The server's view address (n2n serve --view-address), or its ready file")
        connect = QPushButton("Connect")
        connect.clicked.connect(self._on_connect)
        self.model = QLineEdit()
        self.model.setPlaceholderText("model folder (n2n train), or models.yaml (a model per channel)")
        self.model.editingFinished.connect(self._on_model_edited)
        browse = QPushButton("…")
        browse.setToolTip("A model folder (made by n2n train)")
        browse.clicked.connect(self._on_browse)
        browse_set = QPushButton("Set…")
        browse_set.setToolTip("A models.yaml: a model per channel (n2n train --per-channel writes one)")
        browse_set.clicked.connect(self._on_browse_set)
        self.routes = QLabel("")
        self.routes.setWordWrap(True)
        self.routes.setToolTip("Which model denoises each channel (the channel: the core's channel group)")
        self.engine = QComboBox()
        self.engine.addItems(ENGINE_CHOICES)  # exactly what the server's config takes
        self.precision = QComboBox()
        self.precision.addItems(PRECISION_CHOICES)
        self.source = QLineEdit(source)
        self.source.setToolTip("The image layer to denoise as it updates (napari-micromanager: preview)")
        self.start_button = QPushButton("Start denoising")
        self.start_button.clicked.connect(self._on_start)
        self.side = QCheckBox("Side by side")
        self.side.setChecked(side_by_side)
        self.side.toggled.connect(self._arrange)
        self.show_denoised = QCheckBox("Show denoised (overlay)")
        self.show_denoised.setChecked(True)
        self.show_denoised.toggled.connect(self._arrange)
        self.status = QLabel("not connected")
        self.status.setWordWrap(True)

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.address)
        row.addWidget(connect)
        form.addRow("Server", row)
        row = QHBoxLayout()
        row.addWidget(self.model)
        row.addWidget(browse)
        row.addWidget(browse_set)
        form.addRow("Model", row)
        form.addRow("Channels", self.routes)
        form.addRow("Engine", self.engine)
        form.addRow("Precision", self.precision)
        form.addRow("Denoise layer", self.source)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.start_button)
        layout.addWidget(self.side)
        layout.addWidget(self.show_denoised)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (made by n2n train)")
        if folder:
            self.model.setText(folder)
            self._on_model_edited()

    def _on_browse_set(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model set: a model per channel", "", "Model set (*.yaml *.yml)")
        if path:
            self.model.setText(path)
            self._on_model_edited()

    def _on_model_edited(self) -> None:
        """Show which channel goes to which model as soon as the field names a set (or why it does not)."""
        if not self.model.text().strip():
            self.routes.setText("")
            return
        try:
            self.routes.setText(describe_routes(model_set(self.model.text())))
        except ModelSetError as exc:
            self.routes.setText(f"not a model set: {exc}")

    def _on_connect(self) -> None:
        text = self.address.text().strip()
        try:
            if text.endswith(".json") or Path(text).is_file():
                from streamer.client import read_ready_file

                self.connect_to(read_ready_file(text))
            else:
                self.connect_to({"view": text})
        except ValueError as exc:
            self.status.setText(f"cannot connect: {exc}")

    def _on_start(self) -> None:
        if self.local is not None:
            self.stop_denoising()
            return
        try:
            models = model_set(self.model.text())
        except ModelSetError as exc:
            self.status.setText(str(exc))
            return
        self.start_denoising(models, self.engine.currentText(), self.precision.currentText())

    # --- connecting, starting, stopping -----------------------------------------------------------
    def connect_to(self, endpoints: dict[str, str]) -> None:
        """Watch the server at ``endpoints`` (``view``, and ``stats`` for its numbers)."""
        if "view" not in endpoints:
            raise ValueError("expected the server's view address ('view' in its ready file: a server older "
                             f"than n2n view has none), got {', '.join(sorted(endpoints))}")
        self._close_feed()
        self.feed = ViewFeed(endpoints["view"], endpoints.get("stats"), keys=self.keys)
        self.address.setText(endpoints["view"])
        self.status.setText(f"connected to {endpoints['view']}: waiting for frames")

    def start_denoising(self, model: Path | str | ModelSet, engine: str = "auto", precision: str = "auto") -> None:
        """A server in this process on ``model`` (a model folder, a ``models.yaml`` or a :class:`ModelSet`); every
        update of the source layer goes through it, with its channel."""
        models = model if isinstance(model, ModelSet) else ModelSet.parse(model)
        if not isinstance(model, ModelSet):
            self.model.setText(str(model))
        self.models = models
        self.routes.setText(describe_routes(models))
        self.engine.setCurrentText(engine)
        self.precision.setCurrentText(precision)
        self.local = local_server(models, engine, precision)
        self.start_button.setText("Stop denoising")
        names = ", ".join(Path(m).name for m in models.models)
        self.status.setText(f"compiling {names} ({engine}, {precision})…")

    def stop_denoising(self) -> None:
        self._unhook_source()
        self._channels = None
        if self._client is not None:
            self._client.close()
            self._client = None
        self._close_feed()
        if self.local is not None:
            self.local.stop()
            self.local = None
        with contextlib.suppress(RuntimeError):  # (the window may be gone)
            self.start_button.setText("Start denoising")
            self.status.setText("stopped")

    def _close_feed(self) -> None:
        if self.feed is not None:
            self.final_summary = self.feed.summary()
            self.feed.close()
            self.feed = None

    def summary(self) -> dict[str, Any] | None:
        """The viewer's numbers (:meth:`ViewFeed.summary`) now, or as they were when its feed closed."""
        return self.feed.summary() if self.feed is not None else self.final_summary

    def freeze(self) -> None:
        """Stop taking frames (the layers keep the last one): for a snapshot of exactly what is shown."""
        self._timer.stop()

    def close_all(self) -> None:
        """Stop the timer, the feed and a server started here (napari closing, or the widget removed)."""
        with contextlib.suppress(RuntimeError):  # Qt may have deleted the timer with the window already
            self._timer.stop()
        self.stop_denoising()

    def closeEvent(self, event: Any) -> None:  # Qt's name
        self.close_all()
        super().closeEvent(event)

    # --- the source layer (local server) -----------------------------------------------------------
    def _hook_source(self) -> None:
        name = self.source.text().strip()
        if self._source_layer is not None or name not in self.viewer.layers:
            return
        self._source_layer = self.viewer.layers[name]
        if self._channels is None:
            from streamer.micromanager.bridge import FrameChannels  # (not at import: napari lists plugins first)

            self._channels = FrameChannels(self.core if self.core is not None else self._micromanager_core())
            if self.models is not None:
                self.routes.setText(describe_routes(self.models) + "\n" + self._channel_source())
        self._source_layer.events.data.connect(self._on_source_data)
        self._on_source_data()

    def _micromanager_core(self) -> Any:
        """The core of a napari-micromanager window in this viewer (None: there is none)."""
        main = sys.modules.get("napari_micromanager.main_window")  # loaded where napari-micromanager runs
        window = getattr(self.viewer.window, "_qt_window", None)
        if main is None or window is None:
            return None
        found = window.findChild(main.MainWindow)
        return getattr(found, "core", None)

    def _channel_source(self) -> str:
        if self._channels is not None and self._channels.enabled:
            return f"each frame's channel: the core's {self._channels.group!r} group"
        return "frames name no channel (no Micro-Manager core with a channel group)"

    def _unhook_source(self) -> None:
        if self._source_layer is not None:
            self._source_layer.events.data.disconnect(self._on_source_data)
            self._source_layer = None

    def _on_source_data(self, _event: Any = None) -> None:
        data = np.asarray(self._source_layer.data)
        if data.ndim != 2 or self._client is None:
            return
        import zmq

        channel = self._channels.now() if self._channels is not None else None  # what the set routes it by
        try:  # never wait: the live server takes the newest frame; a full input means one is waiting already
            self._client.send(data, meta={"channel": channel} if channel is not None else None, timeout=0)
            self.pushed += 1
        except (TimeoutError, zmq.ZMQError):
            pass

    # --- every 10 ms ------------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.local is not None and self._client is None:
            if self.local.error is not None:
                self.status.setText(f"could not start the server: {self.local.error}")
                self.local = None
                self.start_button.setText("Start denoising")
                return
            endpoints = self.local.endpoints
            if endpoints is None:
                return
            from streamer.client import StreamClient

            self._client = StreamClient(endpoints, timeout=0.0, send_hwm=2)
            self.connect_to(endpoints)
        if self.local is not None:
            self._hook_source()
        if self.feed is None:
            return
        frame = self.feed.poll()
        if frame is not None:
            self._show(frame)
        elif self.feed.server is not None and self.last is None:
            self.status.setText(self._status_text())

    def _show(self, frame: ViewFrame) -> None:
        layers = self.viewer.layers
        if RAW not in layers or layers[RAW].data.shape != frame.raw.shape:
            for name in (RAW, DENOISED):
                if name in layers:
                    layers.remove(name)
            limits = _contrast(frame.raw)
            raw = self.viewer.add_image(frame.raw, name=RAW, contrast_limits=limits, colormap="gray")
            den = self.viewer.add_image(frame.denoised, name=DENOISED, contrast_limits=limits, colormap="gray")
            from napari.experimental import link_layers

            link_layers([raw, den], ("contrast_limits", "gamma", "colormap"))  # one contrast for both
            source = self.source.text().strip()
            if self.local is not None and source in layers:
                layers[source].visible = False  # the raw layer shows the same frames, beside the denoised ones
            self._arrange()
            self.viewer.reset_view()
        else:
            layers[RAW].data = frame.raw
            layers[DENOISED].data = frame.denoised
        self.last = frame
        assert self.feed is not None
        self.feed.shown(frame)
        overlay = self.viewer.text_overlay
        overlay.visible = True
        overlay.position = "top_left"
        overlay.font_size = 11
        overlay.text = self._overlay_text(frame)
        self.status.setText(self._status_text())

    def _arrange(self, *_: Any) -> None:
        layers = self.viewer.layers
        if DENOISED not in layers:
            return
        side = self.side.isChecked()
        self.viewer.grid.enabled = side
        if side:
            self.viewer.grid.shape = (1, 2)
        layers[DENOISED].visible = side or self.show_denoised.isChecked()
        self.show_denoised.setEnabled(not side)

    def _overlay_text(self, frame: ViewFrame) -> str:
        assert self.feed is not None
        latency = frame.latency_ms()
        lat = f" · {latency:.0f} ms from capture" if latency is not None else ""
        return f"{self._sides()} · seq {frame.seq} · {self.feed.rate.rate():.1f} frames/s{lat}"

    def _sides(self) -> str:
        """Which image is which, as the canvas shows them: side by side, the raw one's side; overlaid, the top one."""
        layers = self.viewer.layers
        if not self.viewer.grid.enabled:
            return "denoised (on top; untick to see raw)" if layers[DENOISED].visible else "raw"
        visible = list(layers)
        try:  # napari >= 0.6 takes the layers, older ones their number
            raw_col = self.viewer.grid.position(visible.index(layers[RAW]), visible)[1]
        except TypeError:
            raw_col = self.viewer.grid.position(visible.index(layers[RAW]), len(visible))[1]
        return "raw (left) | denoised (right)" if raw_col == 0 else "denoised (left) | raw (right)"

    def _status_text(self) -> str:
        assert self.feed is not None
        s = self.feed.summary()
        lines = [f"viewer: {s['shown']} shown, {s['skipped']} skipped, {s['display_fps']:.1f} frames/s"]
        st = self.feed.server
        if st is not None:
            lat = st.get("latency_ms") or {}
            p50, p99 = lat.get("p50"), lat.get("p99")
            lines.append(f"server: {st.get('model')} on {st.get('engine')} ({st.get('precision')}), "
                         f"{st.get('mode')} mode")
            lines.append(f"in {st.get('fps_in', 0):.1f} / out {st.get('fps_out', 0):.1f} frames/s, "
                         f"{st.get('drops', 0)} dropped, {st.get('errors', 0)} errors")
            if p50 is not None and p99 is not None:
                lines.append(f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            no_model = st.get("no_model")
            if isinstance(no_model, dict) and no_model:
                lines.append("kept raw, no model for: " + ", ".join(f"{c} ({n})" for c, n in no_model.items()))
        if self.local is not None:
            lines.append(f"denoising layer '{self.source.text()}': {self.pushed} frames sent")
        return "\n".join(lines)

    def wait_shown(self, n: int, timeout: float, app: Any) -> bool:
        """Run the event loop until ``n`` frames have been shown (snapshots, tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while (self.feed is None or self.feed.shown_count < n) and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.002)
        return self.feed is not None and self.feed.shown_count >= n
