"""A multi-channel acquisition through the pycromanager hook with a K-frame model: two channels of the simulated
camera (10 ms and 30 ms: another brightness) sent in pycromanager's event order (t0 c0, t0 c1, t1 c0 …) through
``denoise_hook`` to a real server, scored per channel against the simulator's truth: raw, one history for all (the
hook before streams were keyed: its Axes without the channel) and one history per channel (Axes with the channel).

    python -m bench.hook_channels --model RUN [--frames 16] [--size 256] [--json hook.json]

``RUN``: a K-frame model (``model.input_frames`` > 1), e.g. ``n2n train --config configs/train_temporal_fast.yaml
--data FRAMES --out RUN --minutes 3`` on simulated 10 ms frames (``n2n simulate``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench import command

__all__ = ["CHANNELS", "main", "measure", "table"]

CHANNELS = {"DAPI": 10.0, "GFP": 30.0}
"""The channels sent, by exposure (ms) of the simulated camera."""


def measure(model: Path, frames: int = 16, size: int = 256, progress: command.Progress | None = None) -> dict[str, Any]:
    """Per channel: PSNR (dB) of the raw frames, of one history for all and of one history per channel."""
    from streamer.endpoints import Endpoints
    from streamer.micromanager import denoise_hook
    from streamer.server import ServeConfig, running_server
    from streamer.sources import SimulatedCameraConfig, simulate_stack
    from trainer.metrics import psnr

    say = progress or command.progress_to_stderr
    data = {name: simulate_stack(SimulatedCameraConfig(height=size, width=size, exposure_ms=ms, seed=11 + i), frames)
            for i, (name, ms) in enumerate(CHANNELS.items())}
    cfg = ServeConfig.model_validate({"precision": "fp32", "endpoints": Endpoints.local(), "mode": "lossless"})

    def through_hook(with_channel: bool) -> tuple[dict[str, list[np.ndarray]], dict[str, int]]:
        got: dict[str, list[np.ndarray]] = {name: [] for name in data}
        with running_server(model, cfg) as server, denoise_hook(server.endpoints) as hook:
            for t in range(frames):
                for name, (raw, _) in data.items():
                    axes = {"time": t, "channel": name} if with_channel else {"time": t}
                    got[name].append(np.asarray(hook(raw[t], {"Axes": axes})[0]))
            counts = {"frames": hook.frames, "denoised": hook.denoised, "errors": hook.errors}
        return got, counts

    say("one history for all (the channel left out of the stream)")
    mixed, mixed_counts = through_hook(False)
    say("one history per channel")
    per, per_counts = through_hook(True)
    rows: dict[str, Any] = {}
    for name, (raw, truth) in data.items():
        ranges = [float(g.max() - g.min()) for g in truth]

        def score(images: list[np.ndarray] | np.ndarray, truth: np.ndarray = truth, ranges: list[float] = ranges
                  ) -> float:
            return round(float(np.mean([psnr(np.asarray(x, np.float32), g, r)
                                        for x, g, r in zip(images, truth, ranges)])), 2)

        rows[name] = {"exposure_ms": CHANNELS[name], "psnr_raw_db": score(raw),
                      "psnr_one_history_db": score(mixed[name]), "psnr_per_channel_db": score(per[name])}
    return {"model": str(model), "frames": frames, "size": size, "channels": rows,
            "hook": {"one_history": mixed_counts, "per_channel": per_counts}}


def table(report: dict[str, Any]) -> str:
    rows = ["| channel | exposure | raw | one history for all | per channel |", "|---|---|---|---|---|"]
    for name, r in report["channels"].items():
        rows.append(f"| {name} | {r['exposure_ms']:g} ms | {r['psnr_raw_db']:.2f} dB | {r['psnr_one_history_db']:.2f} "
                    f"dB | {r['psnr_per_channel_db']:.2f} dB |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = command.parser("bench.hook_channels", __doc__)
    ap.add_argument("--model", type=Path, required=True, help="a K-frame run folder")
    ap.add_argument("--frames", type=int, default=16, help="time points per channel")
    ap.add_argument("--size", type=int, default=256, help="frame height and width")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    args = ap.parse_args(argv)
    command.require_model(ap, args.model)
    return command.run_command(lambda: measure(args.model, args.frames, args.size), table, args.json)


if __name__ == "__main__":
    sys.exit(main())
