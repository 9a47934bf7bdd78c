"""python -m bench.mda runs the issue-32 comparison on the simulated microscope and reports sane, self-consistent
figures: every (position, channel, z) stream, the acquisition's output equal to the stream denoised alone, through
the hook and through n2n denoise; the table and the JSON saying the same."""

from __future__ import annotations

import json
from pathlib import Path

from bench import mda


def test_the_mda_benchmark_runs_and_its_paths_agree(trained_run: dict[str, Path], tmp_path: Path) -> None:
    run = trained_run["run"]
    out = tmp_path / "mda.json"
    assert mda.main(["--model", f"DAPI={run}", "--model", f"GFP={run}", "--size", "64", "--times", "3",
                     "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    streams = report["streams"]
    keys = {(s["key"]["position"], s["key"]["channel"], s["key"]["z"]) for s in streams}
    assert len(streams) == len(keys) == len(mda.POSITIONS) * len(mda.CHANNELS) * len(mda.Z_PLANES)
    for s in streams:
        assert abs(s["psnr_mda"] - s["psnr_alone"]) <= 0.05, s
        assert s["psnr_hook"] == s["psnr_mda"] and s["psnr_denoise"] == s["psnr_mda"], s
        assert all(-20 < s[k] < 100 for k in ("psnr_raw", "psnr_gaussian", "psnr_single_stream"))
    acq = report["acquisition"]
    assert acq["frames"] == acq["raw_recorded"] == acq["denoised_frames"] == len(streams) * 3
    assert report["hook"]["frames"] == report["hook"]["denoised"] == len(streams) * 3
    o = report["route_overhead"]
    assert o["single_ms_per_frame"] > 0 and o["keyed_ms_per_frame"] > 0
    assert abs(o["ratio"] - o["keyed_ms_per_frame"] / o["single_ms_per_frame"]) < 0.01
    assert abs(o["ratio_routing"] - o["keyed_ms_per_frame"] / o["streams_ms_per_frame"]) < 0.01
    mean = sum(s["psnr_single_stream"] for s in streams) / len(streams)
    assert abs(report["single_stream"]["psnr_mean"] - mean) < 1e-3
    lines = mda.table(report).splitlines()
    assert len(lines) == 2 + len(streams) + 2
    first = streams[0]
    assert f"{first['psnr_mda']:.2f}" in lines[2] and f"{first['psnr_raw']:.2f}" in lines[2]
