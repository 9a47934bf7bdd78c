"""A K-frame model under sample drift (issue 15): train K = 1 and K-frame models on a still simulated field, score
fields drifting 0, 0.5 and 2 px/frame against the simulator's truth, the K-frame model with and without the motion
check (streamer/core/history.py).

    python -m bench.drift [K ...] [--out runs/drift] [--epochs 20] [--set key=value ...]

Each model is trained once into OUT/kK (reused when it is there); results in OUT/results_k….json.
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tifffile

    from trainer.config import EvaluateConfig
    from trainer.evaluate import evaluate

    ap = command.parser("bench.drift", __doc__)
    ap.add_argument("k", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/drift"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--name", default="", help="suffix of the K > 1 model folders (another training setting)")
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

    for k in args.k:
        if not (folder(k) / CARD_NAME).exists():
            extra = [a for s in args.set for a in ("--set", s)] if k > 1 else []
            subprocess.run(["n2n", "train", "--config", "configs/train_fast.yaml", "--data", str(train), "--reference",
                            str(train_gt), "--out", str(folder(k)), "--set", f"model.input_frames={k}", "--set",
                            "quantize.int8=false", "--set", f"optim.epochs={args.epochs}", *extra], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: dict[str, Any] = {}
    for drift in DRIFTS:
        cam = SimulatedCameraConfig(height=SIZE, width=SIZE, exposure_ms=EXPOSURE_MS, seed=2,
                                    drift_px_per_frame=(0.0, drift))
        raw, truth = simulate_stack(cam, 20)
        for k in args.k:
            for threshold in ([None] if k == 1 else [None, MOTION_THRESHOLD]):
                cfg = EvaluateConfig(engine="openvino", precision="fp32", motion_threshold=threshold)
                report, _ = evaluate(folder(k), raw, truth, cfg)
                key = f"drift {drift} K={k}" + ("" if k == 1 else f" motion_check={'on' if threshold else 'off'}")
                rows[key] = {"psnr": report["psnr_denoised"], "ssim": report["ssim_denoised"],
                             "raw": report["psnr_raw"], "gaussian": report["psnr_gaussian"],
                             "history": report.get("history")}
                print(key, json.dumps(rows[key]), flush=True)
    (out / f"results_k{''.join(map(str, args.k))}{args.name}.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
