"""``n2n denoise``: a recorded dataset through the serving Denoiser, resumable, in this process or on Dask.

One path for every case: the planes still to do are cut into tasks of a few planes (memory per worker is
bounded by a task, never by the dataset); a task reads its planes, denoises them with the same
:class:`~streamer.denoiser.Denoiser` as ``n2n serve`` (one normalisation, one dtype conversion), and
writes them into an OME-Zarr store, one chunk per plane. Tasks run here one after another (one worker)
or on a Dask cluster (``--workers N``: a LocalCluster; ``--scheduler``: an existing one), each worker
process holding its own compiled engine. Only this process records progress: once a task's planes are
written, its range is appended to the store's progress log, so a rerun after a kill redoes nothing
that was finished and nothing that was not.

The engine and precision are decided once, at the start (``auto`` times the precisions on this machine),
and recorded in the store: a resumed run and every worker use the same, so their pixels are the same
bits. The output is the store itself (``.zarr``), or for OME-TIFF a temporary ``OUTPUT.partial.zarr``
beside it, written into the TIFF (under a temporary name, then renamed) once every plane is done.

Planes the input marks as denoised already (an ``n2n denoise`` output, the ``denoised`` channel of an ``n2n bridge``
recording, a recording made through the pycromanager hook) are never denoised again without being asked: see
:mod:`.marks`. The output records which of its planes hold denoised pixels, so that it is known as such in turn.
"""

from .marks import AlreadyDenoised
from .run import DenoiseInterrupted, IncompleteInput, denoise
from .store import PROGRESS_NAME
from .task import Job, run_task

__all__ = ["PROGRESS_NAME", "AlreadyDenoised", "DenoiseInterrupted", "IncompleteInput", "Job", "denoise", "run_task"]
