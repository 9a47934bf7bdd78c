"""napari-micromanager with the n2n widget, on the simulated in-process core (a UniMMCore running the Python camera):
start live in Micro-Manager, denoise its preview, check and report what the layers hold. Run by
tests/test_viewer.py under Xvfb, in a process of its own (Qt and a Python camera want their own process)::

    python tests/napari_mm.py MODEL OUT.png OUT.json [FRAMES [SIZE [CHANNEL [THEN]]]]

MODEL: a model folder or a models.yaml (a model per channel). CHANNEL: the core's ``Channel`` preset to image in
(its model denoises the frames checked); THEN: a preset to switch to, live, once they are shown (the report says
whether its frames came back raw, as the server sends a channel without a model).

(the README's screenshot: ``xvfb-run -a -s "-screen 0 1400x900x24" python tests/napari_mm.py runs/demo/model
docs/napari-micromanager.png /tmp/mm.json 30 256``)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(model: Path, png: Path, report: Path, frames: int = 10, size: int = 96, channel: str | None = None,
         then: str | None = None) -> None:
    import napari
    from napari_micromanager.main_window import MainWindow
    from qtpy.QtWidgets import QApplication

    from streamer.core.modelset import ModelSet
    from streamer.micromanager.core import SIM_CFG, close_core, load_core
    from streamer.napari_plugin._widget import DENOISED, RAW, DenoiseWidget
    from streamer.server import ServeConfig, load_denoiser

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "sim.cfg"
        cfg.write_text(SIM_CFG.replace("Width,512", f"Width,{size}").replace("Height,512", f"Height,{size}")
                       .replace("Exposure,10.0", "Exposure,20.0"))
        core = load_core(cfg)
    viewer = napari.Viewer(title="napari-micromanager + n2n-live", show=True)
    viewer.window.resize(1280, 800)
    app = QApplication.instance()
    mm = MainWindow(viewer, mmcore=core)
    viewer.window.add_dock_widget(mm, name="Micro-Manager", area="top")
    widget = DenoiseWidget(viewer)  # watches the layer napari-micromanager names 'preview'
    viewer.window.add_dock_widget(widget, name="Live denoising", area="right")
    previews: list[np.ndarray] = []  # every preview image, in the order the widget sends them (seq 0, 1, ...)
    try:
        if channel is not None:
            core.setConfig("Channel", channel)
            core.waitForConfig("Channel", channel)
        widget.start_denoising(model, engine="onnxruntime", precision="fp32")
        core.startContinuousSequenceAcquisition(0)
        deadline = time.monotonic() + 120
        while "preview" not in viewer.layers and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.005)
        viewer.layers["preview"].events.data.connect(lambda e: previews.append(np.array(e.source.data)))
        previews.append(np.array(viewer.layers["preview"].data))  # (may be before the widget's first send)
        shown = widget.wait_shown(frames, max(1.0, deadline - time.monotonic()), app)
        last = widget.last
        raw = np.array(viewer.layers[RAW].data) if RAW in viewer.layers else None  # the frame `last`, shown now
        den = np.array(viewer.layers[DENOISED].data) if DENOISED in viewer.layers else None
        out: dict = {"routes": widget.routes.text()}
        if then is not None:  # live, to a channel the set has no model for: its frames come back raw, counted
            core.setConfig("Channel", then)
            seen_raw, counted = False, 0
            while time.monotonic() < deadline and not (seen_raw and counted > 0):
                app.processEvents()
                time.sleep(0.005)
                if widget.last is not None and widget.last is not last:
                    seen_raw = seen_raw or bool(np.array_equal(widget.last.raw, widget.last.denoised))
                server = widget.feed.server if widget.feed else None
                counted = int(((server or {}).get("no_model") or {}).get(then, 0))
            out.update(then_shown_raw=seen_raw, then_no_model=counted, status=widget._status_text())
        widget.freeze()
        core.stopSequenceAcquisition()
        for _ in range(5):
            app.processEvents()
        viewer.screenshot(str(png), canvas_only=False, flash=False)
        out.update(shown=shown, layers=[layer.name for layer in viewer.layers], pushed=widget.pushed)
        if last is not None and raw is not None and den is not None:
            served = ModelSet.parse(str(model)).model_for(channel)
            assert served is not None, f"{model} has no model for {channel}"
            expected = load_denoiser(served, ServeConfig(engine="onnxruntime", precision="fp32"))(raw)
            out.update(seq=last.seq, shape=list(raw.shape), dtype=str(den.dtype),
                       raw_is_a_preview=any(p.shape == raw.shape and np.array_equal(p, raw) for p in previews),
                       denoised_max_diff=float(np.abs(den.astype(np.float64) - expected).max()),
                       denoised_differs_from_raw=bool(np.any(den != raw)), summary=widget.feed.summary()
                       if widget.feed else None)
        report.write_text(json.dumps(out, indent=2))
    finally:
        widget.close_all()
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        viewer.close()
        close_core(core)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *(int(a) for a in sys.argv[4:6]), *sys.argv[6:8])
