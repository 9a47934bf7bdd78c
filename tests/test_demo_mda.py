"""Issue 32: `n2n demo --mda --quick` runs the multi-channel session on the simulated microscope for real, in one
process: bursts per (channel, position, z), a model per channel, the acquisition with every frame denoised, PSNR per
stream against the simulator's truth."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import zarr

from bench.mda import CHANNELS, POSITIONS
from n2n.demo_mda import MDA_QUICK

#: the quick demo's settings with its training bounded by epochs and steps, not seconds: the result (denoised beating
#: raw in every stream) does not depend on the machine's speed or load
SETTINGS = dataclasses.replace(MDA_QUICK, train=dataclasses.replace(MDA_QUICK.train, epochs=12, steps_per_epoch=40,
                                                                      train_seconds=None))
#: `n2n demo --mda --quick` (its run and its summary, as demo_mda_command does) with those settings
RUN = """
import dataclasses, sys
from pathlib import Path
from n2n.command import console, out
from n2n.demo_mda import MDA_QUICK, print_summary, run_demo_mda
s = dataclasses.replace(MDA_QUICK, train=dataclasses.replace(MDA_QUICK.train, epochs=int(sys.argv[2]),
                                                             steps_per_epoch=int(sys.argv[3]), train_seconds=None))
print_summary(run_demo_mda(Path(sys.argv[1]), s, console=console, dashboard=False), out, console, True)
"""


def test_demo_mda_quick(tmp_path: Path) -> None:
    """A row per (channel, position, z) stream in the report and the printed table, the denoised frames beating the
    raw ones in every stream; the raw and denoised recordings hold every frame under the acquisition's channel
    names; the grab's files, the model set and each channel's model are where the report says; exit status 0."""
    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "120", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", RUN, str(out), str(SETTINGS.train.epochs),
                           str(SETTINGS.train.steps_per_epoch)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    report = json.loads((out / "report.json").read_text())
    streams = report["streams"]
    keys = {(s["channel"], s["position"], s["z_um"]) for s in streams}
    assert keys == {(c, p, z) for c in CHANNELS for p in range(len(POSITIONS)) for z in MDA_QUICK.z_um}
    assert len(streams) == len(keys)
    for s in streams:
        assert s["frames"] == MDA_QUICK.times, s
        assert s["psnr_denoised"] > s["psnr_raw"], s
        assert s["psnr_gaussian"] > s["psnr_raw"] and s["gaussian_sigma"] > 0, s  # the classic baseline
    acq = report["acquisition"]
    assert acq["frames"] == acq["denoised_frames"] == acq["raw_recorded"] == len(streams) * MDA_QUICK.times
    assert acq["passed_raw"] == 0 and not acq["stopped"]
    for name in ("raw", "denoised"):
        path = Path(acq[name])
        assert path.parent == out / "acquisition" and path.name == f"{name}.ome.zarr"
        for p in range(len(POSITIONS)):
            group = zarr.open_group(path / str(p), mode="r")
            labels = [c["label"] for c in group.attrs["ome"]["omero"]["channels"]]
            assert labels == list(CHANNELS), labels
            assert group["0"].shape[:3] == (MDA_QUICK.times, len(CHANNELS), len(MDA_QUICK.z_um))
    grab = report["grab"]
    assert grab["frames"] == grab["frames_planned"] == len(streams) * MDA_QUICK.burst_frames
    assert all(Path(f).is_file() for f in grab["files"])
    assert (out / "models" / "models.yaml").is_file() and Path(report["train"]["model_set"]).is_file()
    for c in CHANNELS:
        t = report["train"]["channels"][c]
        assert t["epochs"] == t["epochs_planned"] == SETTINGS.train.epochs and (Path(t["run"]) / "model.onnx").is_file()
    assert "report.json" in report["files"] and (out / "sequence.yaml").is_file()
    table = " ".join(proc.stdout.replace("│", " ").split())
    for s in streams:  # each stream's row, as the report has it
        assert (f"{s['channel']} {s['position']} {s['z_um']:+g} {s['frames']} {s['psnr_raw']:.2f} "
                f"{s['psnr_gaussian']:.2f} ({s['gaussian_sigma']:g}) {s['psnr_denoised']:.2f}") in table
    assert "1/4" in proc.stderr and "4/4" in proc.stderr  # every stage announced
