"""A model trained at one exposure, served at others: what the user gets (the default precision, as ``n2n serve`` and
``n2n denoise`` run it) against float32, raw, the Gaussian filter, and a model trained at the served exposure.

    python -m bench.exposure [--out runs/exposure] [--train-ms 10] [--test-ms 3 30 100] [--averages 4]
                             [--epochs 10] [--frames 80] [--size 256] [--test-frames 8]
                             [--config configs/train_fast.yaml] [--set key=value ...] [--json F]

A microscopist changes exposure and laser power during a session. The model (``--config``, default the real-time
preset) is trained on ``--frames`` simulated frames at ``--train-ms``; each test exposure gets ``--test-frames``
frames of another field (seed 1) and a model of its own trained at that exposure on the same schedule (the
"matched" column). Every model is trained once into OUT (reused when there).

``--averages N``: frames that are each the mean of N readouts at ``--train-ms`` (a confocal's line or frame averaging),
served by the same model told so (``averaged=N``, as ``--averaged N`` does), not told (what it would do with them
otherwise), and against a model trained on such averages (of ``--frames`` × N simulated frames).

A model with a bright network (``data.bright_expert``, on in the presets) serves the frames bright enough for it with
that network: the "default" column says how many and at which precision.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from bench import command
from streamer.core.card import CARD_NAME
from streamer.sources import SimulatedCameraConfig, simulate_stack

__all__ = ["main"]


def averages(raw: np.ndarray, n: int) -> np.ndarray:
    """The means of ``n`` consecutive frames (float32), as a camera that averages ``n`` readouts gives them."""
    return raw[: len(raw) // n * n].astype(np.float32).reshape(-1, n, *raw.shape[1:]).mean(axis=1)


def _train(out: Path, ms: float, args: Any, averaged: int = 1) -> Path:
    import tifffile

    tag = f"{ms:g}ms" + (f"_avg{averaged}" if averaged > 1 else "")
    folder = out / f"train_{tag}"
    if (folder / CARD_NAME).exists():
        return folder
    data, gt = out / f"frames_{tag}.ome.tif", out / f"truth_{tag}.ome.tif"
    raw, truth = simulate_stack(SimulatedCameraConfig(height=args.size, width=args.size, exposure_ms=ms, seed=0),
                                args.frames * averaged)
    if averaged > 1:
        raw, truth = averages(raw, averaged), truth[::averaged]
    tifffile.imwrite(data, raw, ome=True, metadata={"axes": "TYX"})
    tifffile.imwrite(gt, truth, ome=True, metadata={"axes": "TYX"})
    sets = [a for s in [f"optim.epochs={args.epochs}", *args.set] for a in ("--set", s)]
    command.progress_to_stderr(f"training at {tag} into {folder}")
    subprocess.run(["n2n", "train", "--config", str(args.config), "--data", str(data), "--reference", str(gt),
                    "--out", str(folder), *sets], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return folder


def measure(args: Any) -> dict[str, Any]:
    from trainer.config import EvaluateConfig
    from trainer.evaluate import evaluate

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = _train(out, args.train_ms, args)
    rows: list[dict[str, Any]] = []
    for ms in args.test_ms:
        raw, truth = simulate_stack(SimulatedCameraConfig(height=args.size, width=args.size, exposure_ms=ms, seed=1),
                                    args.test_frames)
        row: dict[str, Any] = {"exposure_ms": ms}
        default, _ = evaluate(model, raw, truth, EvaluateConfig(precision="auto"))
        fp32, _ = evaluate(model, raw, truth, EvaluateConfig(precision="fp32"))
        row |= {"psnr_raw": default["psnr_raw"], "psnr_gaussian": default["psnr_gaussian"],
                "psnr_default": default["psnr_denoised"], "default_precision": default["precision"],
                "default_engine": default["engine"], "psnr_fp32": fp32["psnr_denoised"],
                "default_flagged": default.get("flagged", {}), "frames": default["frames"],
                "default_bright_frames": default.get("bright_frames", 0),
                "default_bright_precision": default.get("bright_precision")}
        if args.matched and ms != args.train_ms:
            matched, _ = evaluate(_train(out, ms, args), raw, truth, EvaluateConfig(precision="auto"))
            row["psnr_matched"] = matched["psnr_denoised"]
        elif args.matched:
            row["psnr_matched"] = default["psnr_denoised"]
        rows.append(row)
        command.progress_to_stderr(json.dumps(row))
    averaged_rows: list[dict[str, Any]] = []
    for n in args.averages:
        raw, truth = simulate_stack(SimulatedCameraConfig(height=args.size, width=args.size,
                                                          exposure_ms=args.train_ms, seed=1), args.test_frames * n)
        frames, truth = averages(raw, n), truth[::n]
        told, _ = evaluate(model, frames, truth, EvaluateConfig(precision="auto", averaged=n))
        untold, _ = evaluate(model, frames, truth, EvaluateConfig(precision="auto"))
        row = {"averaged": n, "exposure_ms": args.train_ms, "psnr_raw": told["psnr_raw"],
               "psnr_gaussian": told["psnr_gaussian"], "psnr_told": told["psnr_denoised"],
               "psnr_untold": untold["psnr_denoised"], "default_precision": told["precision"],
               "frames": told["frames"], "default_bright_frames": told.get("bright_frames", 0),
               "default_bright_precision": told.get("bright_precision")}
        if args.matched:
            matched, _ = evaluate(_train(out, args.train_ms, args, averaged=n), frames, truth,
                                  EvaluateConfig(precision="auto"))
            row["psnr_matched"] = matched["psnr_denoised"]
        averaged_rows.append(row)
        command.progress_to_stderr(json.dumps(row))
    return {"train_ms": args.train_ms, "config": str(args.config), "epochs": args.epochs, "rows": rows,
            "averaged": averaged_rows}


def _served(row: dict[str, Any]) -> str:
    """How a row's frames were served: the precision, and how many went to the model's bright network at which."""
    bright = row.get("default_bright_frames") or 0
    if not bright:
        return str(row["default_precision"])
    frames = row.get("frames", "?")
    if bright == frames:
        return f"bright network, {row.get('default_bright_precision')}"
    return (f"{row['default_precision']}; {bright} of {frames} by the bright network, "
            f"{row.get('default_bright_precision')}")


def table(report: dict[str, Any]) -> str:
    lines = [f"model trained at {report['train_ms']:g} ms ({report['config']}, {report['epochs']} epochs)", "",
             "| exposure | raw | Gaussian | default (precision) | fp32 | model trained there |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        matched = f"{r['psnr_matched']:.2f}" if "psnr_matched" in r else "–"
        flagged = r.get("default_flagged", {})
        how = _served(r) + "".join(f", {n} of {r.get('frames', '?')} {f.replace('_', ' ')}"
                                   for f, n in sorted(flagged.items()))
        lines.append(f"| {r['exposure_ms']:g} ms | {r['psnr_raw']:.2f} | {r['psnr_gaussian']:.2f} | "
                     f"{r['psnr_default']:.2f} ({how}) | {r['psnr_fp32']:.2f} | {matched} |")
    if report.get("averaged"):
        lines += ["", "| frames | raw | Gaussian | --averaged N (precision) | not told | trained on such averages |",
                  "|---|---|---|---|---|---|"]
        for r in report["averaged"]:
            matched = f"{r['psnr_matched']:.2f}" if "psnr_matched" in r else "–"
            lines.append(f"| mean of {r['averaged']} at {r['exposure_ms']:g} ms | {r['psnr_raw']:.2f} | "
                         f"{r['psnr_gaussian']:.2f} | {r['psnr_told']:.2f} ({_served(r)}) | "
                         f"{r['psnr_untold']:.2f} | {matched} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = command.parser("bench.exposure", __doc__, show_defaults=True)
    ap.add_argument("--out", type=Path, default=Path("runs/exposure"))
    ap.add_argument("--train-ms", type=float, default=10.0)
    ap.add_argument("--test-ms", type=float, nargs="+", default=[3.0, 30.0, 100.0])
    ap.add_argument("--averages", type=int, nargs="*", default=[4],
                    help="frames averaged over N readouts at --train-ms (none: skip)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--test-frames", type=int, default=8)
    ap.add_argument("--config", type=Path, default=Path("configs/train_fast.yaml"))
    ap.add_argument("--no-matched", dest="matched", action="store_false",
                    help="skip the models trained at each test exposure")
    ap.add_argument("--set", action="append", default=[], help="training config override, repeatable")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    return command.run_command(lambda: measure(args), table, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
