"""A K-frame model under sample drift: train K = 1 and K-frame models on a still simulated field, score fields
drifting 0, 0.5 and 2 px/frame against the simulator's truth, the K-frame model with and without the motion check
(streamer/core/history.py), and the K-frame model's answer for a frame alone (each frame repeated K times: what it
serves for the first frame of a stream and for a frame that moved).

    python -m bench.drift [K ...] [--out runs/drift] [--epochs 20] [--temporal configs/train_temporal.yaml]
                          [--set key=value ...]

The K = 1 model is the real-time preset (configs/train_fast.yaml); a K-frame model is the network and the training
windows of ``--temporal`` (a shipped K-frame config: its ``model`` and ``data.repeated_windows`` /
``data.reversed_pairs``) at that K, on the same data and schedule. Each model is trained once into OUT/kK (reused when
it is there); results in OUT/results_k….json.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench import command
from streamer.core.card import CARD_NAME
from streamer.core.history import MOTION_THRESHOLD
from streamer.sources import SimulatedCameraConfig, simulate_stack

__all__ = ["main"]

SIZE, EXPOSURE_MS, DRIFTS = 256, 5.0, (0.0, 0.5, 2.0)


def _temporal_settings(path: Path) -> tuple[list[str], int]:
    """``--set`` overrides that give a K-frame model ``path``'s network and training windows (its K is the run's),
    and that config's own K."""
    from trainer.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, path)
    model = cfg.model.model_dump(mode="json", exclude={"input_frames"})
    sets = [f"model.{key}={json.dumps(value)}" for key, value in model.items()]
    sets += [f"data.repeated_windows={cfg.data.repeated_windows}", f"data.reversed_pairs={cfg.data.reversed_pairs}"]
    return sets, cfg.model.input_frames


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tifffile

    from trainer.config import EvaluateConfig
    from trainer.evaluate import evaluate

    ap = command.parser("bench.drift", __doc__)
    ap.add_argument("k", nargs="*", type=int, help="the K to train and score (default: 1 and the --temporal config's)")
    ap.add_argument("--out", type=Path, default=Path("runs/drift"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--name", default="", help="suffix of the K > 1 model folders (another training setting)")
    ap.add_argument("--temporal", type=Path, default=Path("configs/train_temporal.yaml"),
                    help="the K-frame config whose network and training windows the K > 1 models take")
    ap.add_argument("--set", action="append", default=[], help="training config override for K > 1, repeatable")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train, train_gt = out / "train.ome.tif", out / "train_gt.ome.tif"
    if not train.exists():
        raw, truth = simulate_stack(SimulatedCameraConfig(height=SIZE, width=SIZE, exposure_ms=EXPOSURE_MS, seed=1), 50)
        tifffile.imwrite(train, raw, ome=True, metadata={"axes": "TYX"})
        tifffile.imwrite(train_gt, truth, ome=True, metadata={"axes": "TYX"})

    def folder(k: int) -> Path:
        return out / f"k{k}{args.name if k > 1 else ''}"

    temporal, k_shipped = _temporal_settings(args.temporal)
    args.k = args.k or [1, k_shipped]
    for k in args.k:
        if not (folder(k) / CARD_NAME).exists():
            extra = [a for s in [*temporal, *args.set] for a in ("--set", s)] if k > 1 else []
            subprocess.run(["n2n", "train", "--config", "configs/train_fast.yaml", "--data", str(train), "--reference",
                            str(train_gt), "--out", str(folder(k)), "--set", f"model.input_frames={k}", "--set",
                            "quantize.int8=false", "--set", f"optim.epochs={args.epochs}",
                            "--set", "data.bright_expert=null",  # (served at the training light: never used here)
                            *extra], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: dict[str, Any] = {}
    for drift in DRIFTS:
        cam = SimulatedCameraConfig(height=SIZE, width=SIZE, exposure_ms=EXPOSURE_MS, seed=2,
                                    drift_px_per_frame=(0.0, drift))
        raw, truth = simulate_stack(cam, 20)
        for k in args.k:
            for threshold in ([None] if k == 1 else [None, MOTION_THRESHOLD, "alone"]):
                alone = threshold == "alone"  # every frame by itself (the history never matches): the fallback
                cfg = EvaluateConfig(engine="openvino", precision="fp32",
                                     motion_threshold=1e-9 if alone else threshold)  # type: ignore[arg-type]
                report, _ = evaluate(folder(k), raw, truth, cfg)
                key = f"drift {drift} K={k}" + ("" if k == 1 else " frame alone" if alone else
                                                f" motion_check={'on' if threshold else 'off'}")
                rows[key] = {"psnr": report["psnr_denoised"], "ssim": report["ssim_denoised"],
                             "raw": report["psnr_raw"], "gaussian": report["psnr_gaussian"],
                             "history": report.get("history")}
                print(key, json.dumps(rows[key]), flush=True)
    (out / f"results_k{''.join(map(str, args.k))}{args.name}.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
