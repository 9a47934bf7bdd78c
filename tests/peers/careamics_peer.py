#!/usr/bin/env python
"""CAREamics peer: train a tiny Noise2Noise model, export it to the BioImage
Model Zoo with CAREamics' own exporter, add torchscript/onnx weights with
bioimageio.core's converters, and write a test frame plus CAREamics' own
prediction of it.

Run with the zoo interpreter (careamics + bioimageio.core), not the project venv:

    /work/zoo-venv/bin/python tests/peers/careamics_peer.py OUTDIR [--seed 0]

Everything is offline and all files are written below OUTDIR (including the
bioimageio cache, lightning logs/checkpoints and temporary files).  stdout
carries exactly one JSON line (also written to OUTDIR/peer.json); all logs go
to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import zipfile
from pathlib import Path

T0 = time.time()
FRAME_SHAPE = (96, 128)  # the exported rdf has FIXED y/x sizes = this shape
TRAIN_SHAPE = (128, 128)
N_TRAIN = 4
PATCH = 32
DEPTH = 2


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    return p.parse_args()


ARGS = _parse()
OUT: Path = ARGS.outdir.resolve()
OUT.mkdir(parents=True, exist_ok=True)
_TMP = OUT / "tmp"
_TMP.mkdir(exist_ok=True)

# Keep every side effect inside OUTDIR and offline. Must happen before imports.
os.environ["BIOIMAGEIO_CACHE_PATH"] = str(OUT / "bioimageio_cache")
os.environ.setdefault("BIOIMAGEIO_LOG_WARNINGS", "false")
os.environ["TMPDIR"] = str(_TMP)
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("PYTHONWARNINGS", "ignore")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_TMP / "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(_TMP / "triton"))
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "mpl"))
# onnxruntime >= 1.2x keeps a telemetry/device-id sqlite db in
# $XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime (default ~/.cache)
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
os.environ["XDG_CACHE_HOME"] = str(_TMP / "xdg_cache")

import tempfile  # noqa: E402

tempfile.tempdir = str(_TMP)

# stdout must carry only the final JSON line: route fd 1 (python prints, C
# libraries, careamics' "Model description test passed.") to stderr and keep
# a private handle on the real stdout.
sys.stdout.flush()
_REAL_STDOUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

import logging  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore")
for _name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def log(*a) -> None:
    print("[careamics_peer]", *a, file=sys.stderr, flush=True)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:2000]


# --------------------------------------------------------------------- data
def clean_image(rng: np.random.Generator, shape) -> np.ndarray:
    """Smooth blobs: a sum of random anisotropic gaussians, ~100 + 400*[0, 1+]."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    img = np.zeros(shape, np.float32)
    for _ in range(24):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        sy, sx = rng.uniform(3, 10), rng.uniform(3, 10)
        a = rng.uniform(0.3, 1.0)
        img += a * np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2)
    return (100.0 + 400.0 * img).astype(np.float32)  # camera-like offset/gain


def noisy(rng: np.random.Generator, clean: np.ndarray, sigma=40.0) -> np.ndarray:
    return (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)


def _check_pydantic() -> None:
    """bioimageio.spec 0.5.12.0 cannot save a model with pydantic >= 2.14 (its wrap-serialisers call
    ``handler(value, info)``, which pydantic_core 2.50 rejects: ``'index_key' is expected to be an integer``), so
    every save, CAREamics' export_to_bmz included, fails. Say so plainly rather than fail deep inside."""
    import pydantic

    major, minor = (int(v) for v in pydantic.VERSION.split(".")[:2])
    if (major, minor) >= (2, 14):
        raise SystemExit(f"pydantic {pydantic.VERSION}: bioimageio.spec 0.5.12.0 cannot save packages with it; "
                         "install pydantic<2.14 in this environment (docs/zoo.md)")


def _convert_torchscript(descr, out_dir: Path, errors: dict):
    """pytorch_state_dict -> torchscript with bioimageio.core's converter.

    Scripting is tried first, then tracing (as bioimageio.core's add_weights
    does).  bioimageio.core 0.11.0's converter never calls ``model.eval()``, so a
    traced UNet with BatchNorm bakes in *training-mode* batch statistics.  We
    check every conversion numerically against the eval-mode state-dict model
    on the (preprocessed) test input and, if it does not reproduce it, convert
    again with ``load_torch_model`` wrapped to return an eval-mode model.
    """
    import bioimageio.core.weight_converters.pytorch_to_torchscript as p2t
    from bioimageio.core.backends.pytorch_backend import load_torch_model
    from bioimageio.core.weight_converters._utils_torch_onnx import get_torch_sample_inputs

    info: dict = {}
    x = get_torch_sample_inputs(descr)
    with torch.no_grad():
        ref = load_torch_model(descr.weights.pytorch_state_dict, load_state=True).eval()(*x)

    def check(path: Path) -> float:
        m = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.no_grad():
            return float((m(*x) - ref).abs().max())

    orig_loader = p2t.load_torch_model
    for tracing in (False, True):
        key = "torchscript_tracing" if tracing else "torchscript_scripting"
        name = "weights_torchscript_traced.pt" if tracing else "weights_torchscript.pt"
        try:
            wd = p2t.convert(descr, output_path=out_dir / name, use_tracing=tracing)
        except Exception as e:
            errors[key] = _err(e)
            log(f"torchscript conversion (tracing={tracing}) failed:", _err(e))
            continue
        diff = check(out_dir / name)
        info[f"{key}_stock_max_abs_diff_normalized"] = diff
        log(f"torchscript (tracing={tracing}) stock converter: max|ts - eval model| = {diff:.3g}")
        if diff <= 1e-4:
            return wd, info
        errors[key] = (
            f"stock bioimageio.core converter output differs from the eval-mode model "
            f"(max abs diff {diff:.3g} in normalized units): model not put in eval() "
            f"before {'tracing' if tracing else 'scripting'} (BatchNorm in training mode); "
            f"re-converted with load_torch_model(...).eval()"
        )
        try:
            p2t.load_torch_model = lambda *a, **k: orig_loader(*a, **k).eval()
            wd = p2t.convert(descr, output_path=out_dir / name, use_tracing=tracing)
        except Exception as e:
            errors[key] += f"; eval re-conversion failed: {_err(e)}"
            continue
        finally:
            p2t.load_torch_model = orig_loader
        diff = check(out_dir / name)
        info[f"{key}_eval_max_abs_diff_normalized"] = diff
        log(f"torchscript (tracing={tracing}) eval-mode conversion: max diff = {diff:.3g}")
        if diff <= 1e-4:
            wd.comment = (wd.comment or "") + " Converted from model.eval()."
            return wd, info
    return None, info


def main() -> dict:
    import bioimageio.core
    import bioimageio.spec
    import careamics
    from careamics import CAREamist
    from careamics.config import create_advanced_n2n_config

    _check_pydantic()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)  # lightning resets on import

    rng = np.random.default_rng(ARGS.seed)
    torch.manual_seed(ARGS.seed)
    clean = np.stack([clean_image(rng, TRAIN_SHAPE) for _ in range(N_TRAIN)])
    x_train = noisy(rng, clean)  # SYX
    y_train = noisy(rng, clean)  # independent second realisation (N2N target)
    frame_clean = clean_image(rng, FRAME_SHAPE)
    frame = noisy(rng, frame_clean)
    np.save(OUT / "frame.npy", frame)
    np.save(OUT / "frame_clean.npy", frame_clean)

    # ------------------------------------------------------------ configure
    # One mean and std for inputs and targets (both are noisy realisations of the same images): CAREamics'
    # predict de-normalises with the target statistics while its BMZ export writes the input statistics into the
    # package's post-processing, so with two sets the package and careamics' own predict disagree (by 1.7 in
    # 600 here with its own statistics).
    both = np.concatenate([x_train, y_train])
    stats = {"input_means": [float(both.mean())], "input_stds": [float(both.std())],
             "target_means": [float(both.mean())], "target_stds": [float(both.std())]}
    config = create_advanced_n2n_config(
        experiment_name="peer_n2n",
        data_type="array",
        axes="SYX",
        patch_size=[PATCH, PATCH],
        batch_size=8,
        num_epochs=ARGS.epochs,
        augmentations=[],
        n_val_patches=8,
        normalization_params=stats,
        in_memory=True,
        num_workers=0,
        model_params={"depth": DEPTH, "num_channels_init": 8},
        trainer_params={
            "accelerator": "cpu",
            "devices": 1,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "deterministic": True,
        },
        logger="none",
        seed=ARGS.seed + 1,  # careamics' DataConfig requires seed > 0
    )
    model_cfg = config.algorithm_config.model.model_dump()
    log("model config:", model_cfg)

    work = OUT / "careamics_work"
    careamist = CAREamist(config, work_dir=work, enable_progress_bar=False)
    t = time.time()
    careamist.train(train_data=x_train, train_data_target=y_train)
    t_train = time.time() - t
    log(f"trained in {t_train:.1f}s")
    norm = careamist.config.data_config.normalization.model_dump()

    # ------------------------------------------------- careamics own predict
    pred_list, _ = careamist.predict(
        frame[None], data_type="array", axes="SYX", tile_size=None
    )
    pred = np.asarray(pred_list[0], dtype=np.float32)
    raw_pred_shape = list(pred.shape)
    pred = pred.reshape(FRAME_SHAPE)
    np.save(OUT / "careamics_prediction.npy", pred)

    # ------------------------------------------------------------ BMZ export
    pkg = OUT / "careamics_model.zip"
    t = time.time()
    careamist.export_to_bmz(
        path_to_archive=pkg,
        friendly_model_name="n2n-live-careamics-peer",
        input_array=frame[None],  # SYX; fixes the rdf's input y/x sizes
        authors=[{"name": "n2n-live peer test"}],
        general_description="Tiny Noise2Noise UNet trained on synthetic blobs.",
        data_description="Synthetic smooth blobs plus Gaussian noise (numpy).",
    )
    t_export = time.time() - t

    from bioimageio.spec import load_model_description, save_bioimageio_package

    descr = load_model_description(pkg, perform_io_checks=False)
    original_weights = list(descr.weights.available_formats)
    with zipfile.ZipFile(pkg) as z:
        rdf_name = next(n for n in z.namelist() if n.endswith(("bioimageio.yaml", "rdf.yaml")))
        (OUT / "careamics_model.bioimageio.yaml").write_bytes(z.read(rdf_name))
        original_files = sorted(z.namelist())

    # ----------------------------------------------------- weight conversion
    conversion_errors: dict = {}
    torchscript_info: dict = {}
    converted_test_kwargs: dict = {}
    converted_pkg = OUT / "careamics_model_converted.zip"
    converted_dir = OUT / "converted_folder"
    conv_descr = load_model_description(
        pkg, perform_io_checks=False, format_version="latest"
    )
    missing = [f for f in ("torchscript", "onnx") if f not in original_weights]
    if missing:
        from bioimageio.spec import save_bioimageio_package_as_folder

        converted_dir = save_bioimageio_package_as_folder(conv_descr, output_path=converted_dir)
        conv_descr = load_model_description(
            converted_dir, perform_io_checks=False, format_version="latest"
        )
        if "torchscript" in missing:
            conv_descr.weights.torchscript, ts_info = _convert_torchscript(
                conv_descr, converted_dir, conversion_errors
            )
            torchscript_info.update(ts_info)
        if "onnx" in missing:
            try:
                from bioimageio.core.weight_converters.pytorch_to_onnx import (
                    convert as to_onnx,
                )

                conv_descr.weights.onnx = to_onnx(
                    conv_descr, output_path=converted_dir / "weights.onnx"
                )
                log("onnx ok")
            except Exception as e:
                conversion_errors["onnx"] = _err(e)
                log("onnx conversion failed:", _err(e))
                if conv_descr.weights.torchscript is not None:
                    try:
                        from bioimageio.core.weight_converters.torchscript_to_onnx import (
                            convert as ts_to_onnx,
                        )

                        conv_descr.weights.onnx = ts_to_onnx(
                            conv_descr, output_path=converted_dir / "weights.onnx"
                        )
                        conversion_errors["onnx"] += " (succeeded via torchscript_to_onnx)"
                    except Exception as e2:
                        conversion_errors["onnx_from_torchscript"] = _err(e2)
        # CAREamics only sets relaxed reproducibility tolerances for
        # pytorch_state_dict (config.bioimageio.test_kwargs, atol=rtol=1e-2); give
        # the converted formats the same ones so test_model judges them alike.
        extra = conv_descr.config.bioimageio.model_extra
        tk = extra.setdefault("test_kwargs", {}) if extra is not None else {}
        if "pytorch_state_dict" in tk:
            for wf in ("torchscript", "onnx"):
                if getattr(conv_descr.weights, wf) is not None:
                    tk.setdefault(wf, dict(tk["pytorch_state_dict"]))
        converted_test_kwargs = dict(tk)
        save_bioimageio_package(conv_descr, output_path=converted_pkg)
    else:
        import shutil

        shutil.copyfile(pkg, converted_pkg)

    conv_loaded = load_model_description(converted_pkg)  # with io checks
    converted_weights = (
        list(conv_loaded.weights.available_formats)
        if hasattr(conv_loaded, "weights")
        else []
    )
    with zipfile.ZipFile(converted_pkg) as z:
        rdf_name = next(n for n in z.namelist() if n.endswith(("bioimageio.yaml", "rdf.yaml")))
        (OUT / "careamics_model_converted.bioimageio.yaml").write_bytes(z.read(rdf_name))
        converted_files = sorted(z.namelist())

    # ------------------------------------------------------------ validation
    validation: dict = {}
    for label, path in (("original", pkg), ("converted", converted_pkg)):
        d = load_model_description(path)
        entry: dict = {"load_model_description": getattr(d.validation_summary, "status", "?"),
                       "type": type(d).__name__}
        validation[label] = entry
        formats = list(d.weights.available_formats) if hasattr(d, "weights") else []
        for wf in formats:
            try:  # fresh load per format: a summary accumulates details otherwise
                s = bioimageio.core.test_model(path, weight_format=wf, devices=["cpu"])
                entry[f"test_model[{wf}]"] = s.status
                if s.status != "passed":
                    fails = [
                        f"{det.name}: {[str(e.msg)[:300] for e in det.errors]}"
                        for det in s.details
                        if det.status == "failed"
                    ]
                    entry[f"test_model[{wf}]_failures"] = fails[:5]
            except Exception as e:
                entry[f"test_model[{wf}]"] = "error: " + _err(e)

    # ---------------------- bioimageio.core prediction vs careamics' predict
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline

    bmz_vs_careamics: dict = {}
    for wf in converted_weights:
        try:
            pp = create_prediction_pipeline(conv_loaded, weight_format=wf, devices=["cpu"])
            ipt = conv_loaded.inputs[0]
            opt = conv_loaded.outputs[0]
            sample = Sample(
                members={ipt.id: Tensor.from_numpy(frame[None, None], dims=("batch", "channel", "y", "x"))},
                stat={},
                id="frame",
            )
            out = pp.predict_sample_without_blocking(sample)
            arr = np.asarray(out.members[opt.id].data, dtype=np.float32).reshape(FRAME_SHAPE)
            np.save(OUT / f"bmz_prediction_{wf}.npy", arr)
            # CAREamics de-normalises with the *target* mean/std, its BMZ export
            # writes the *input* mean/std into postprocessing; undo that here
            # to show whether it explains the whole difference.
            eps = 1e-6
            mi, si = norm["input_means"][0], norm["input_stds"][0]
            mt = (norm.get("target_means") or [mi])[0]
            st = (norm.get("target_stds") or [si])[0]
            fixed = (arr.astype(np.float64) - mi) / (si + eps) * (st + eps) + mt
            bmz_vs_careamics[wf] = {
                "max_abs_diff": float(np.max(np.abs(arr - pred))),
                "mean_abs_diff": float(np.mean(np.abs(arr - pred))),
                "max_abs_diff_after_target_stats_fix": float(np.max(np.abs(fixed - pred))),
            }
            pp.unload()
        except Exception as e:
            bmz_vs_careamics[wf] = {"error": _err(e)}
            log(f"bmz predict {wf} failed:", traceback.format_exc())

    with zipfile.ZipFile(pkg) as z, z.open("outputs.npy") as f:
        pkg_out_diff = float(np.max(np.abs(np.load(f).reshape(FRAME_SHAPE) - pred)))

    def rmse(a):
        return float(np.sqrt(np.mean((a - frame_clean) ** 2)))

    return {
        "careamics": careamics.__version__,
        "bioimageio_core": bioimageio.core.__version__,
        "bioimageio_spec": bioimageio.spec.__version__,
        "torch": torch.__version__,
        "seed": ARGS.seed,
        "original_weights": original_weights,
        "converted_weights": converted_weights,
        "packages": {
            "original": str(pkg),
            "converted": str(converted_pkg),
            "original_rdf": str(OUT / "careamics_model.bioimageio.yaml"),
            "converted_rdf": str(OUT / "careamics_model_converted.bioimageio.yaml"),
            "frame": str(OUT / "frame.npy"),
            "frame_clean": str(OUT / "frame_clean.npy"),
            "careamics_prediction": str(OUT / "careamics_prediction.npy"),
        },
        "package_files": {"original": original_files, "converted": converted_files},
        "frame_shape": list(frame.shape),
        "frame_dtype": str(frame.dtype),
        "careamics_predict_raw_shape": raw_pred_shape,
        "normalization": norm,
        "model": model_cfg,
        "validation": validation,
        "bmz_vs_careamics": bmz_vs_careamics,
        "rmse_vs_clean": {"noisy": rmse(frame), "careamics": rmse(pred)},
        "conversion_errors": conversion_errors,
        "torchscript_checks": torchscript_info,
        "converted_test_kwargs": converted_test_kwargs,
        "package_test_output_vs_careamics_prediction_max_abs_diff": pkg_out_diff,
        "timing": {"train_s": round(t_train, 2), "export_s": round(t_export, 2)},
    }


if __name__ == "__main__":
    try:
        result = main()
        rc = 0
    except Exception as e:
        traceback.print_exc()
        result = {"error": _err(e)}
        rc = 1
    result["seconds"] = round(time.time() - T0, 2)
    line = json.dumps(result, default=str)
    (OUT / "peer.json").write_text(line + "\n")
    _REAL_STDOUT.write(line + "\n")
    _REAL_STDOUT.flush()
    import shutil

    shutil.rmtree(_TMP, ignore_errors=True)
    sys.exit(rc)
