"""Open files with napari's own readers, as a user does (File > Open, ``viewer.open(path, plugin=...)``), and report
what napari made of each: its layers' names, shapes, scales, axis labels and units, and their pixels. Run by
tests/test_open_in_napari.py under Xvfb, in a process of its own (Qt wants its own process)::

    python tests/napari_open.py OPENS.json OUT.json OUT.npz

OPENS.json: a list of ``[PATH, PLUGIN]`` (PLUGIN: an npe2 plugin name, e.g. ``napari-ome-zarr``). OUT.json: per
path, ``{"layers": [{"name", "shape", "dtype", "scale", "axis_labels", "units", "multiscale", "key"}]}`` or
``{"error": TEXT}``; OUT.npz: each layer's pixels (its full-resolution level) under its ``key``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def main(opens: Path, report: Path, pixels: Path) -> None:
    warnings.simplefilter("ignore")
    import napari

    viewer = napari.Viewer(title="n2n-live: open the files", show=False)
    out: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    try:
        for i, (path, plugin) in enumerate(json.loads(opens.read_text())):
            viewer.layers.clear()
            try:
                layers = viewer.open(path, plugin=plugin)
            except Exception as exc:  # reported, for the test to say what napari said
                out[path] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"}
                continue
            described = []
            for j, layer in enumerate(layers):
                data = layer.data[0] if layer.multiscale else layer.data
                key = f"{i}_{j}"
                arrays[key] = np.asarray(data)
                described.append({"name": layer.name, "type": type(layer).__name__, "shape": list(arrays[key].shape),
                                  "dtype": str(arrays[key].dtype), "scale": [float(s) for s in layer.scale],
                                  "axis_labels": [str(a) for a in layer.axis_labels],
                                  "units": [str(u) for u in layer.units], "multiscale": bool(layer.multiscale),
                                  "key": key})
            out[path] = {"layers": described}
    finally:
        viewer.close()
    np.savez(pixels, **arrays)
    report.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
