"""``n2n denoise``'s configuration (``configs/denoise.yaml``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from ..core.choices import Device, EngineChoice, OutputDtype, PrecisionChoice
from ..core.config import Versioned

__all__ = ["DenoiseConfig"]


class DenoiseConfig(Versioned):
    """``n2n denoise``: a recorded dataset through the serving Denoiser, resumable, on one machine or Dask."""

    engine: EngineChoice = "auto"
    """Inference engine (the same Denoiser as n2n serve: a plane denoised here is the frame served live)."""
    precision: PrecisionChoice = "auto"
    """auto: the fastest precision that passes its check here, decided once and recorded, so a resumed
    run and every worker use the same one."""
    retime: bool = False
    """precision 'auto': time the precisions that passed their check again instead of taking the choice recorded for
    this machine in the model folder (precision_choice.json), and record the new choice."""
    averaged: int = Field(1, ge=1)
    """Each plane is the mean of this many camera readouts (line or frame averaging): the model's noise model is
    divided accordingly (models with the camera's noise model only)."""
    device: Device = "auto"
    """Device for the engine."""
    threads: int | None = Field(None, ge=1)
    """Engine threads per worker; None: the machine's cores shared among the workers."""
    dtype: OutputDtype = "same"
    """Output pixels: same (the input's dtype, clipped and rounded, as the server converts) or float32."""
    channel: int | str | None = None
    """Denoise only this channel (an index or a name) and copy the others; None: every plane."""
    workers: int = Field(1, ge=1)
    """Processes: 1 runs here; N > 1 starts a Dask LocalCluster of N workers."""
    scheduler: str | None = None
    """An existing Dask scheduler (tcp://HOST:PORT) instead of a local cluster; every worker must see the
    input, the model and the output's folder under the same paths."""
    chunk_mib: float = Field(16.0, gt=0)
    """Planes per task: as many as fit this many MiB of input (at most 16), so memory per worker is bounded
    by a chunk, never the dataset."""
    overwrite: bool = False
    """Replace an existing output (never the input)."""
    denoise_again: bool = False
    """Denoise the planes the input marks as denoised already (n2n-denoised: true, or an n2n denoise output's record)
    anyway, with a warning. Off: such an input is refused, in one line that names the raw record where its
    metadata says it."""
    skip_denoised: bool = False
    """Denoise only the planes the input does not mark as denoised already; copy the marked ones as they are (a
    recording made through the pycromanager hook whose server was away for a while)."""
    trust_code: bool = False
    """Run a TorchScript file this install did not write (a downloaded package's or run folder's): a TorchScript file
    is a program that can read and write your files. Off: such a model runs from its ONNX weights (auto) or is
    refused (engine torch)."""

    @model_validator(mode="after")
    def _one_answer(self) -> DenoiseConfig:
        if self.denoise_again and self.skip_denoised:
            raise ValueError("expected at most one of denoise_again (denoise the marked planes again) and "
                             "skip_denoised (copy them as they are), got both")
        return self
