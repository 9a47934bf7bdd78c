"""A multi-dimensional acquisition denoised as it is written (issue 32): 2 channels × 2 positions × 3 z-planes × T
time points on the simulated microscope (pymmcore-plus's real UniMMCore and MDA runner, ome-writers OME-Zarr),
through :func:`streamer.micromanager.mda.acquire` and a server on a K-frame model set (a model per channel), scored
per (position, channel, z) stream against the simulator's truth:

* ``psnr_mda``: what the acquisition wrote (denoised.ome.zarr);
* ``psnr_alone``: the same stream's raw frames (raw.ome.zarr) denoised alone, as one stream by its channel's model
  (the Denoiser called directly, the history rule of :mod:`streamer.core.history`): the MDA must equal it;
* ``psnr_hook``: the same raw frames through the pycromanager hook in the acquisition's event order (its Axes);
* ``psnr_denoise``: the raw recording through ``n2n denoise`` with the model set (a position at a time);
* ``psnr_raw`` and ``psnr_gaussian`` (the best Gaussian filter, an oracle's sigma per stream);
* ``single_stream``: today's behaviour before streams were keyed: every frame in event order through ONE history
  and ONE model (the first channel's);
* ``route_overhead``: the keyed, model-set server's time per frame over a one-model server's (the same frames and
  model, requests with and without a channel and stream), from one run.

    python -m bench.mda [--model DAPI=RUN --model GFP=RUN] [--size 128] [--times 10] [--json mda.json]

Without ``--model``, a K = 3 real-time model is trained per channel first (``configs/train_temporal_fast.yaml``,
``--train-minutes`` each) on bursts the simulated microscope records at other stage positions.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import command

__all__ = ["CHANNELS", "EXPOSURE_MS", "POSITIONS", "TRAIN_POSITIONS", "Z_PLANES", "channel_ranges",
           "gaussian_baseline", "main", "mean_psnr", "measure", "stream_frames", "table"]

CHANNELS = ("DAPI", "GFP")
POSITIONS = ((0.0, 0.0), (100.0, -60.0))
"""Stage positions (µm) of the acquisition (fields with cells in both channels)."""
TRAIN_POSITIONS = ((300.0, 200.0), (-50.0, 80.0))
"""Where the training bursts are recorded: other fields than the acquisition's."""
Z_PLANES = (-2.0, 0.0, 2.0)
"""Heights (µm) around focus: defocus blurs the outer two."""
EXPOSURE_MS = {"DAPI": 40.0, "GFP": 10.0}
"""Each channel's exposure, as a microscopist sets it: the dim DAPI stain longer (the simulated microscope's DAPI is
a quarter of GFP's brightness)."""


def _sequence(times: int) -> Any:
    import useq

    return useq.MDASequence(axis_order="tpgcz", channels=[{"config": c, "exposure": EXPOSURE_MS[c]} for c in CHANNELS],
                            stage_positions=[{"x": x, "y": y, "z": 0.0} for x, y in POSITIONS],
                            z_plan={"range": Z_PLANES[-1] - Z_PLANES[0], "step": Z_PLANES[1] - Z_PLANES[0]},
                            time_plan={"interval": 0, "loops": times})


def train_models(core: Any, out: Path, frames: int, minutes: float, overrides: dict[str, Any] | None = None,
                 say: command.Progress = command.progress_to_stderr) -> dict[str, Path]:
    """A K-frame model per channel, trained on bursts of ``frames`` consecutive frames per (training position, z)."""
    from streamer.core.config import load_config
    from streamer.sources import OmeTiffWriter
    from trainer.config import TrainConfig
    from trainer.run import run_training

    runs: dict[str, Path] = {}
    for channel in CHANNELS:
        core.setConfig("Channel", channel)
        core.setExposure(EXPOSURE_MS[channel])
        stacks = []
        for i, (x, y) in enumerate(TRAIN_POSITIONS):
            for j, z in enumerate(Z_PLANES):
                core.setXYPosition(x, y)
                core.setPosition(z)
                path = out / "bursts" / f"{channel}_p{i}_z{j}.ome.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                with OmeTiffWriter(path, (core.getImageHeight(), core.getImageWidth()), np.dtype(np.uint16),
                                   name=channel) as writer:
                    for _ in range(frames):
                        core.snapImage()
                        writer.write(np.asarray(core.getImage()), {})
                stacks.append(path)
        say(f"training {channel} on {len(stacks)} bursts of {frames} frames ({minutes:g} min)")
        preset = Path(__file__).resolve().parents[1] / "configs" / "train_temporal_fast.yaml"
        settings: dict[str, Any] = {"optim.max_minutes": minutes, "quantize.int8": False}
        for key, value in (overrides or {}).items():
            settings[key] = value
        cfg = load_config(TrainConfig, preset, **settings)
        runs[channel] = out / "models" / channel
        run_training(cfg, runs[channel], stacks)
    return runs


def stream_frames(path: Path, positions: list[Path] | None = None, *, channels: tuple[str, ...] = CHANNELS,
                  n_positions: int = len(POSITIONS),
                  n_z: int = len(Z_PLANES)) -> dict[tuple[int, str, int], np.ndarray]:
    """Every (position, channel, z) stream of an ome-writers OME-Zarr (per position ``p/0``: t, c, z, y, x), or of
    one OME-Zarr per position (``positions``: n2n denoise's outputs, array ``0``); keys (position, channel, z index)."""
    import zarr

    out: dict[tuple[int, str, int], np.ndarray] = {}
    for p in range(n_positions):
        if positions is None:
            array = np.asarray(zarr.open_group(path, mode="r")[f"{p}/0"])
        else:
            array = np.asarray(zarr.open_group(positions[p], mode="r")["0"])
        for c, channel in enumerate(channels):
            for z in range(n_z):
                out[(p, channel, z)] = array[:, c, z]
    return out


def channel_ranges(truths: dict[tuple[int, str, int], np.ndarray]) -> dict[str, float]:
    """One PSNR data range per channel: its brightest stream's truth's (max - min), so a dim plane scores as dim."""
    ranges: dict[str, float] = {}
    for (_p, c, _z), t in truths.items():
        ranges[c] = max(ranges.get(c, 0.0), float(t.max() - t.min()))
    return ranges


def mean_psnr(images: Any, truth: np.ndarray, data_range: float) -> float:
    """The mean PSNR (dB, 3 decimals) of ``images`` against ``truth`` (one noise-free image for them all)."""
    from trainer.metrics import psnr

    return round(float(np.mean([psnr(np.asarray(x, np.float32), truth, data_range) for x in images])), 3)


def gaussian_baseline(raw: np.ndarray, truth: np.ndarray, data_range: float) -> tuple[float, float]:
    """The best Gaussian filter of ``raw`` against ``truth`` (an oracle's sigma for the stream): (PSNR, sigma)."""
    from trainer.evaluate import best_gaussian

    sigma, blurred, _ = best_gaussian(raw, [truth] * len(raw), [data_range] * len(raw),
                                      (0.5, 0.75, 1.0, 1.5, 2.0, 3.0))
    return mean_psnr(blurred, truth, data_range), sigma


def _alone(den: Any, frames: np.ndarray, threshold: float | None) -> list[np.ndarray]:
    from streamer.core.history import FrameHistory

    hist = FrameHistory(den.input_frames, threshold)
    return [den(f, previous=hist.advance(f, t)) for t, f in enumerate(frames)]


def _route_overhead(models: dict[str, Path], frames: dict[tuple[int, str, int], np.ndarray], cfg: Any,
                    rounds: int = 3) -> dict[str, Any]:
    """Seconds per frame through a server: one model, frames without a channel or stream (today's server:
    ``ratio``), and one model with each frame's stream (the same histories: ``ratio_routing``, the model set's own
    cost), against the model set with each frame's channel and stream; the same frames, requests one at a time,
    interleaved."""
    from streamer.client import StreamClient
    from streamer.core.modelset import ModelSet
    from streamer.core.streams import stream_key
    from streamer.server import running_server

    first = next(iter(models.values()))
    order = [(k, t) for t in range(next(iter(frames.values())).shape[0]) for k in sorted(frames)]
    # the same model for every channel in the set: only the routing and keying differ from the single server
    keyed = ModelSet({c: str(first) for c in CHANNELS})
    times: dict[str, list[float]] = {"single": [], "streams": [], "keyed": []}
    with running_server(first, cfg) as single, running_server(keyed, cfg) as routed:
        for _ in range(rounds):
            for name, server in (("single", single), ("streams", single), ("keyed", routed)):
                with StreamClient(server.endpoints, timeout=30) as client:
                    t0 = time.perf_counter()
                    for (p, c, z), t in order:
                        where = stream_key({"position": p, "z": z}, c)
                        meta = ({"channel": c, "stream": where} if name == "keyed" else
                                {"stream": where} if name == "streams" else {})
                        client.request(frames[(p, c, z)][t], meta=meta)
                    times[name].append((time.perf_counter() - t0) / len(order))
    best = {name: min(t) for name, t in times.items()}
    return {"single_ms_per_frame": round(best["single"] * 1000, 3),
            "streams_ms_per_frame": round(best["streams"] * 1000, 3),
            "keyed_ms_per_frame": round(best["keyed"] * 1000, 3),
            "ratio": round(best["keyed"] / best["single"], 3),
            "ratio_routing": round(best["keyed"] / best["streams"], 3), "frames": len(order), "rounds": rounds}


def measure(models: dict[str, Path] | None = None, size: int = 128, times: int = 10, train_frames: int = 16,
            train_minutes: float = 1.5, train_overrides: dict[str, Any] | None = None, work: Path | None = None,
            progress: command.Progress | None = None) -> dict[str, Any]:
    """The comparison (see the module docstring); ``work``: where the acquisition and trained models go (a
    temporary folder when None)."""
    from streamer.core.modelset import ModelSet
    from streamer.endpoints import Endpoints
    from streamer.micromanager import denoise_hook
    from streamer.micromanager.core import open_core
    from streamer.micromanager.mda import acquire
    from streamer.micromanager.microscope import microscope_of
    from streamer.offline.config import DenoiseConfig
    from streamer.offline.run import denoise
    from streamer.server import ServeConfig, load_denoiser, running_server

    say = progress or command.progress_to_stderr
    tmp = None
    if work is None:
        tmp = tempfile.mkdtemp(prefix="n2n-bench-mda-")
        work = Path(tmp)
    try:
        cfg = ServeConfig.model_validate({"precision": "fp32", "endpoints": Endpoints.local(), "mode": "lossless"})
        with open_core("sim") as core:
            core.setProperty("Camera", "Width", size)
            core.setProperty("Camera", "Height", size)
            if models is None:
                models = train_models(core, work, train_frames, train_minutes, train_overrides, say)
            model_set = ModelSet({c: str(models[c]) for c in CHANNELS})
            sequence = _sequence(times)
            say(f"acquiring {len(CHANNELS)} channels × {len(POSITIONS)} positions × {len(Z_PLANES)} z × {times} t")
            with running_server(model_set, cfg) as server:
                report = acquire(core, sequence, server.endpoints, work / "acquisition", overwrite=True)
            scope = microscope_of(core)
            truths = {(p, c, z): scope.expected(c, POSITIONS[p], Z_PLANES[z], EXPOSURE_MS[c])
                      for p in range(len(POSITIONS)) for c in CHANNELS for z in range(len(Z_PLANES))}
        raw = stream_frames(Path(report.raw))
        written = stream_frames(Path(report.denoised))
        dens = {c: load_denoiser(models[c], cfg) for c in CHANNELS}
        say("the raw recording through n2n denoise, a position at a time")
        offline = []
        for p in range(len(POSITIONS)):
            offline.append(work / f"offline_p{p}.ome.zarr")
            shutil.rmtree(offline[-1], ignore_errors=True)
            denoise(Path(report.raw) / str(p), model_set, offline[-1], DenoiseConfig(precision="fp32"))
        denoised_offline = stream_frames(Path(report.raw), offline)
        say("the same frames: each stream alone, through the hook, and in one history for all")
        with running_server(model_set, cfg) as server, denoise_hook(server.endpoints) as hook:
            hooked: dict[tuple[int, str, int], list[np.ndarray]] = {k: [] for k in raw}
            for t in range(times):
                for p in range(len(POSITIONS)):
                    for c in CHANNELS:
                        for z in range(len(Z_PLANES)):
                            axes = {"time": t, "position": p, "channel": c, "z": z}
                            hooked[(p, c, z)].append(np.asarray(hook(raw[(p, c, z)][t], {"Axes": axes})[0]))
            hook_counts = hook.counts()
        single = dens[CHANNELS[0]]  # before: one model, one history, every frame in event order
        from streamer.core.history import FrameHistory

        hist = FrameHistory(single.input_frames, cfg.motion_threshold)
        one_history: dict[tuple[int, str, int], list[np.ndarray]] = {k: [] for k in raw}
        seq = 0
        for t in range(times):
            for p in range(len(POSITIONS)):
                for c in CHANNELS:
                    for z in range(len(Z_PLANES)):
                        frame = raw[(p, c, z)][t]
                        one_history[(p, c, z)].append(single(frame, previous=hist.advance(frame, seq)))
                        seq += 1
        streams = []
        ranges = channel_ranges(truths)
        for key in sorted(raw):
            p, c, z = key

            def score(images: Any, truth: np.ndarray = truths[key], data_range: float = ranges[c]) -> float:
                return mean_psnr(images, truth, data_range)

            psnr_gaussian, sigma = gaussian_baseline(raw[key], truths[key], ranges[c])
            streams.append({"key": {"position": p, "channel": c, "z": Z_PLANES[z]},
                            "psnr_mda": score(written[key]), "psnr_alone": score(_alone(dens[c], raw[key],
                                                                                         cfg.motion_threshold)),
                            "psnr_hook": score(hooked[key]), "psnr_denoise": score(denoised_offline[key]),
                            "psnr_raw": score(raw[key]),
                            "psnr_gaussian": psnr_gaussian, "gaussian_sigma": sigma,
                            "psnr_single_stream": score(one_history[key])})
        say("the server's time per frame, keyed and routed against one stream")
        overhead = _route_overhead(models, raw, cfg)
        return {"size": size, "times": times, "channels": list(CHANNELS), "positions": [list(p) for p in POSITIONS],
                "z_um": list(Z_PLANES), "models": {c: str(m) for c, m in models.items()},
                "acquisition": {k: v for k, v in report.to_dict().items() if k != "streams"},
                "hook": hook_counts, "streams": streams,
                "single_stream": {"model": str(models[CHANNELS[0]]),
                                  "psnr_mean": round(float(np.mean([s["psnr_single_stream"] for s in streams])), 3)},
                "route_overhead": overhead}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def table(report: dict[str, Any]) -> str:
    rows = ["| position | channel | z (µm) | raw | Gaussian | one history, one model (before) | MDA | alone | hook "
            "| n2n denoise |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["streams"]:
        k = s["key"]
        rows.append(f"| {k['position']} | {k['channel']} | {k['z']:+g} | {s['psnr_raw']:.2f} | "
                    f"{s['psnr_gaussian']:.2f} | {s['psnr_single_stream']:.2f} | {s['psnr_mda']:.2f} | "
                    f"{s['psnr_alone']:.2f} | {s['psnr_hook']:.2f} | {s['psnr_denoise']:.2f} |")
    o = report["route_overhead"]
    rows.append("")
    rows.append(f"route overhead: {o['keyed_ms_per_frame']:.2f} ms per frame keyed and routed (a model set), "
                f"{o['single_ms_per_frame']:.2f} ms one stream and one model (ratio {o['ratio']:.3f}), "
                f"{o['streams_ms_per_frame']:.2f} ms one model keyed by stream (ratio {o['ratio_routing']:.3f}); "
                f"{o['frames']} frames, best of {o['rounds']}")
    return "\n".join(rows)


def _model_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or name not in CHANNELS:
        raise ValueError(f"expected CHANNEL=RUN with CHANNEL one of {', '.join(CHANNELS)}, got {text!r}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = command.parser("bench.mda", __doc__)
    ap.add_argument("--model", type=_model_arg, action="append", default=None,
                    help="CHANNEL=RUN, a K-frame model per channel (DAPI and GFP); none: train them here")
    ap.add_argument("--size", type=int, default=128, help="frame height and width")
    ap.add_argument("--times", type=int, default=10, help="time points")
    ap.add_argument("--train-frames", type=int, default=16, help="frames per training burst (no --model)")
    ap.add_argument("--train-minutes", type=float, default=1.5, help="training time per channel (no --model)")
    ap.add_argument("--work", type=Path, default=None, help="keep the acquisition and models here")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    args = ap.parse_args(argv)
    models = dict(args.model) if args.model else None
    if models is not None:
        missing = [c for c in CHANNELS if c not in models]
        if missing:
            ap.error(f"--model: expected a model for each of {', '.join(CHANNELS)}, missing {', '.join(missing)}")
        for path in models.values():
            command.require_model(ap, path)
    return command.run_command(lambda: measure(models, args.size, args.times, args.train_frames, args.train_minutes,
                                               work=args.work), table, args.json)


if __name__ == "__main__":
    sys.exit(main())
