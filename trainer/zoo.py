"""A trained run as a BioImage Model Zoo package (``n2n export --format bioimageio``): the format deepImageJ,
ilastik, QuPath, napari and CAREamics read (https://bioimage.io, model spec 0.5, written with ``bioimageio.spec``).

The package holds the ONNX and TorchScript exports as its weights, a test input (a real frame of the run's
training data, or the one given) and the output the network gives for it, the card's normalisation as the zoo's
pre/post-processing (``fixed_zero_mean_unit_variance`` in, ``scale_linear`` with the same mean and std out: an
exact map), a cover (raw | denoised), a README and the model card itself (``model.json``, attached, and in
``config.n2n_live``): training provenance, metrics and, for a K-frame model, ``input_frames``. A K-frame model
takes its K frames as the input's K channels, oldest first; the zoo has no word for "consecutive frames", so the
channel names (``t_minus_2``, ``t_minus_1``, ``t``) and ``config.n2n_live.input_frames`` say it.

What does not map: the card's tiling advice (the zoo's consumers tile by the axes' size steps and the output's
halo instead), the INT8 OpenVINO graph (not a zoo weights format) and the camera dtype (the package's tensors
are float32 intensities; a camera's uint16 frame is converted on the way in).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer.core.card import CARD_NAME, ONNX_NAME, TORCHSCRIPT_NAME, ModelCard, unet_reach
from streamer.core.zoo import CONFIG_KEY, TEST_INPUT_ID, TEST_OUTPUT_ID, spec_files_closed

from .card import add_artifact
from .export import export_onnx, export_torchscript
from .inference import load_run

__all__ = ["ZooExportError", "export_bioimageio"]

log = logging.getLogger("n2n.trainer")

NOISE2NOISE = ("Lehtinen J, Munkberg J, Hasselgren J, Laine S, Karras T, Aittala M, Aila T. Noise2Noise: Learning "
               "Image Restoration without Clean Data. ICML 2018.", "10.48550/arXiv.1803.04189")
UNET = ("Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
        "MICCAI 2015.", "10.1007/978-3-319-24574-4_28")


class ZooExportError(ValueError):
    """The run cannot be written as a zoo package, or the package did not pass the zoo's validation."""


def _sample(card: ModelCard, sample: Path | None, k: int) -> np.ndarray:
    """(K, H, W) float32 frames for the test input: ``sample``'s first K frames, else the run's first training
    stack's (when it is still where the card says and unchanged)."""
    from streamer.sources import read_stack

    if sample is None:
        files = card.training.get("data", {}).get("data", [])
        found = [Path(f["path"]) for f in files if Path(f.get("path", "")).is_file()]
        if not found:
            raise ZooExportError("the run's training data is not where its card says "
                                 f"({', '.join(str(f.get('path')) for f in files) or 'none recorded'}); "
                                 "give a frame or stack to use as the test input with --sample FILE")
        sample = found[0]
    stack = read_stack(sample, allow_2d=True)
    if stack.ndim == 2:
        stack = stack[None]
    if len(stack) < k:
        raise ZooExportError(f"{sample}: expected at least {k} frames for a {k}-frame model's test input, "
                             f"got {len(stack)}")
    frames = stack[:k].astype(np.float32)
    m = card.size_multiple
    h, w = frames.shape[-2:]
    side = min(512, h // m * m, w // m * m)  # a square test tensor of a size every consumer can run at once
    if side < m:
        raise ZooExportError(f"{sample}: expected frames of at least {m}×{m} pixels, got {h}×{w}")
    r0, c0 = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(frames[:, r0 : r0 + side, c0 : c0 + side])


def _cover(raw: np.ndarray, denoised: np.ndarray, path: Path) -> None:
    """raw | denoised side by side (the zoo asks for 2:1 covers), one contrast for both."""
    import imageio.v3 as iio

    lo, hi = np.percentile(raw, [0.5, 99.8])
    both = np.concatenate([raw, denoised], axis=1)
    img = np.clip((both - lo) / max(hi - lo, 1e-12), 0, 1)
    iio.imwrite(path, (img * 255).round().astype(np.uint8))


def _readme(card: ModelCard, k: int) -> str:
    tr = card.training
    data = tr.get("data", {})
    files = "\n".join(f"- `{Path(f['path']).name}`: {f.get('shape')} {f.get('dtype', '')}, sha256 "
                      f"`{f.get('sha256', '')[:16]}…`" for f in data.get("data", [])) or "- (not recorded)"
    frames = ("one frame" if k == 1 else
              f"{k} consecutive frames t−{k - 1} … t as its {k} input channels, oldest first (causal: it never "
              "sees a later frame); for the first frames of a series repeat the oldest frame you have")
    metrics = "\n".join(f"- {k_}: {v:.4g}" for k_, v in card.metrics.items()) or "- (none recorded)"
    return f"""# {card.name}: Noise2Noise denoiser (n2n-live)

A 2-D U-Net trained with Noise2Noise ({tr.get('mode', 'n2n')}) on pairs of consecutive low-exposure frames of
the same field, with no clean data. It denoises {frames}.

## Input and output
- Input `{TEST_INPUT_ID}`: float32 intensities (a camera's counts as they are, e.g. uint16 converted to float32),
  axes batch, channel, y, x. Height and width: multiples of {card.size_multiple} (at least {card.size_multiple}).
- Output `{TEST_OUTPUT_ID}`: float32 intensities in the input's units, same height and width.
- Pre-processing: fixed zero mean, unit variance with the training data's mean {card.mean:.6g} and standard
  deviation {card.std:.6g}; post-processing: the inverse (scale by the std, add the mean). Never per-image
  statistics: the brightness of a frame is kept.
- Tiling: the network's reach is {unet_reach(card.architecture.levels)} pixels (the output's halo, where the test
  frame is large enough to declare it); tiles that overlap by that much stitch without seams.

## Training
{files}

Mode `{tr.get('mode', '?')}`, architecture: depth {card.architecture.depth}, filters
{card.architecture.filters or card.architecture.base_filters}, {card.architecture.parameters or '?'} parameters.
Metrics at the end of training:
{metrics}

The whole model card (configuration, data, history, versions) is attached as `{CARD_NAME}` and repeated under
`config.{CONFIG_KEY}` of the package's `rdf.yaml`.

## Validation
Every export is checked against the PyTorch network on a random frame (relative error at most 1e-4; recorded in
`model.json` under `artifacts`), and the package's test output is the network's output for its test input.
Quality on held-out data: `n2n evaluate --model THIS.zip --data NOISY.tif --reference CLEAN.tif`.

## Use
- Live, on a Micro-Manager stream: `n2n serve --model THIS.zip` (https://github.com/n2n-live).
- Anywhere the zoo's packages run: deepImageJ, ilastik, QuPath, napari, `bioimageio predict`.
"""


def _descr(card: ModelCard, work: Path, x: np.ndarray, y: np.ndarray, authors: list[str], license: str,
           name: str | None, cover: Path) -> Any:
    import bioimageio.spec.model.v0_5 as v
    from bioimageio.spec.common import FileDescr

    k, m = card.input_frames, card.size_multiple
    # The halo (the network's reach) tells a zoo consumer how much tiles must overlap; the zoo needs the smallest
    # input to exceed twice it, so it is declared where the test frame is that large (the network itself takes any
    # multiple of m: without a halo the minimum is m).
    halo = unet_reach(card.architecture.levels)
    smallest = (2 * halo + m) // m * m
    if min(x.shape[-2:]) < smallest:
        log.warning("test frame %s smaller than %d: the package declares no halo (tiles should overlap by %d px)",
                    x.shape[-2:], smallest, halo)
        halo, smallest = 0, m
    channels = ["t"] if k == 1 else [f"t_minus_{k - 1 - i}" if i < k - 1 else "t" for i in range(k)]
    space = [v.SpaceInputAxis(id=v.AxisId(a), size=v.ParameterizedSize(min=smallest, step=m)) for a in ("y", "x")]
    np.save(work / "test_input.npy", x[None])
    np.save(work / "test_output.npy", y[None, None])
    import tifffile  # the sample tensors: the same frames as images any viewer opens

    tifffile.imwrite(work / "sample_input.tif", x, photometric="minisblack")  # (K, H, W): K frames, not colours
    tifffile.imwrite(work / "sample_output.tif", y)
    raw = v.TensorId(TEST_INPUT_ID)
    inputs = [v.InputTensorDescr(
        id=raw, description=f"{k} frame{'s' if k > 1 else ''} of float32 intensities"
        + (", oldest first" if k > 1 else ""),
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in channels]), *space],
        test_tensor=FileDescr(source=work / "test_input.npy"),
        sample_tensor=FileDescr(source=work / "sample_input.tif"),
        data=v.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[v.FixedZeroMeanUnitVarianceDescr(
            kwargs=v.FixedZeroMeanUnitVarianceKwargs(mean=card.mean, std=card.std))])]
    outputs = [v.OutputTensorDescr(
        id=v.TensorId(TEST_OUTPUT_ID), description="the newest frame, denoised, in the input's units",
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("denoised")]),
              *[v.SpaceOutputAxisWithHalo(id=v.AxisId(a), halo=halo,
                                          size=v.SizeReference(tensor_id=raw, axis_id=v.AxisId(a))) if halo else
                v.SpaceOutputAxis(id=v.AxisId(a), size=v.SizeReference(tensor_id=raw, axis_id=v.AxisId(a)))
                for a in ("y", "x")]],
        test_tensor=FileDescr(source=work / "test_output.npy"),
        sample_tensor=FileDescr(source=work / "sample_output.tif"),
        data=v.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=[v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=card.std, offset=card.mean))])]
    onnx = card.artifacts["onnx"]
    weights = v.WeightsDescr(
        onnx=v.OnnxWeightsDescr(source=card.artifact("onnx"), opset_version=onnx.opset or 18),
        torchscript=v.TorchscriptWeightsDescr(source=card.artifact("torchscript"),
                                              pytorch_version=v.Version(torch.__version__.split("+")[0]),
                                              parent="onnx"))
    (work / "README.md").write_text(_readme(card, k))
    shutil.copy(card.run_dir / CARD_NAME, work / CARD_NAME)
    provenance = json.loads(card.model_dump_json(exclude={"artifacts", "history"}, exclude_none=True))
    return v.ModelDescr(
        name=name or f"n2n-live {card.name}",
        description=f"Noise2Noise denoiser for fluorescence microscopy ({k}-frame, 2-D), trained with n2n-live "
                    "on pairs of consecutive low-exposure frames.",
        authors=[v.Author(name=a) for a in authors],
        cite=[v.CiteEntry(text=t, doi=v.Doi(d)) for t, d in (NOISE2NOISE, UNET)],
        license=license,
        documentation=FileDescr(source=work / "README.md"),
        covers=[FileDescr(source=cover)],
        attachments=[FileDescr(source=work / CARD_NAME)],
        tags=["denoising", "noise2noise", "2d", "fluorescence-light-microscopy", "pytorch", "onnx", "n2n-live"],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        config={CONFIG_KEY: {"input_frames": k, "card": provenance}},  # type: ignore[arg-type]
    )


def export_bioimageio(run_dir: str | Path, out: str | Path, sample: str | Path | None = None,
                      authors: list[str] | None = None, license: str = "CC-BY-4.0",
                      name: str | None = None) -> Path:
    """Write ``out`` (a ``.zip``), the run as a zoo package, after checking it with ``bioimageio.spec`` (format,
    files and their hashes). Missing ONNX / TorchScript exports are made first (and recorded in the card)."""
    import getpass

    from bioimageio.spec import ValidationContext, save_bioimageio_package

    run_dir, out = Path(run_dir), Path(out)
    if out.suffix != ".zip":
        raise ZooExportError(f"expected a .zip path for the package, got {out}")
    m = load_run(run_dir)
    card = m.card
    if not card.normalization.linear:
        raise ZooExportError(
            f"{run_dir}: this model normalises with the camera's noise model ({card.normalization.kind}), which the "
            "zoo's pre/post-processing cannot express; to export it, train with --set data.normalization=meanstd")
    for fmt, name_, fn in (("onnx", ONNX_NAME, export_onnx), ("torchscript", TORCHSCRIPT_NAME, export_torchscript)):
        if fmt not in card.artifacts or not (run_dir / card.artifacts[fmt].path).exists():
            log.info("exporting %s first", fmt)
            card = add_artifact(run_dir, fn(m.net, run_dir / name_))
    k = card.input_frames
    x = _sample(card, Path(sample) if sample is not None else None, k)
    with torch.no_grad():
        norm = m.normalization
        y = m.net.eval()(torch.from_numpy(norm.normalize(x))[None]).numpy()[0, 0]
    y = norm.denormalize(y)
    with tempfile.TemporaryDirectory(prefix="n2n-zoo-") as tmp:
        work = Path(tmp)
        cover = work / "cover.png"
        _cover(x[-1], y, cover)
        try:
            who = authors or [getpass.getuser()]
        except Exception:  # no user name (a container without one)
            who = ["n2n-live user"]
        with spec_files_closed():
            with ValidationContext(perform_io_checks=True):
                descr = _descr(card, work, x, y, who, license, name, cover)
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_name(out.name + ".part")
            save_bioimageio_package(descr, output_path=part)
            del descr
        part.replace(out)
    log.info("wrote %s", out)
    return out
