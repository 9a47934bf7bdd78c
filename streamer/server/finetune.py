"""The server's side of online fine-tuning (``n2n serve --finetune``): the worker process, the pairs of consecutive
frames sent to it, and its status. Nothing here waits: a worker that is busy misses pairs (counted), a worker that
dies is reported and the server serves on.

The worker is training code (``trainer.live``); the streamer never imports the trainer, so whoever starts a server
with fine-tuning on gives the command that runs it (``n2n serve`` gives ``python -m trainer.live``, see
:func:`trainer.live.worker_command`), and the link adds the arguments of its protocol::

    WORKER --model RUN --out DIR --frames ADDR --status ADDR --config JSON
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..core.card import WEIGHTS_NAME
from ..core.messages import encode_pair
from ..core.processes import stop_process
from ..denoiser import Denoiser
from ..protocol import Message
from .config import FinetuneConfig

__all__ = ["FinetuneLink"]

log = logging.getLogger("n2n.streamer")


def _below_and_bound(nice: int) -> Any:
    """In the worker, before it runs: a lower priority, and (Linux) a SIGTERM when the server's process ends, however
    it ends (a server killed cannot stop its worker; the worker also watches for its parent itself)."""
    def setup() -> None:
        os.nice(nice)
        if sys.platform.startswith("linux"):
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return setup


class FinetuneLink:
    """Start the worker (``worker``: the command that runs it) on ``model_dir``; :meth:`offer` each frame served,
    :meth:`poll` for its status and the candidates it saved (run folders in ``out``)."""

    def __init__(self, ctx: zmq.Context, model_dir: Path, cfg: FinetuneConfig, out: Path,
                 worker: Sequence[str], input_frames: int = 1) -> None:
        self.cfg = cfg
        self.out = out
        self.frames = ctx.socket(zmq.PUSH)
        self.frames.setsockopt(zmq.SNDHWM, 2)  # pairs queued for the worker at most; it misses the others
        self.frames.setsockopt(zmq.LINGER, 0)
        self.frames.bind("tcp://127.0.0.1:*")
        self.status_socket = ctx.socket(zmq.PULL)
        self.status_socket.setsockopt(zmq.LINGER, 0)
        self.status_socket.bind("tcp://127.0.0.1:*")
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "finetune.log"
        settings = cfg.model_dump(exclude={"enabled", "out", "nice"})
        cmd = [*worker, "--model", str(model_dir), "--out", str(out),
               "--frames", self.frames.getsockopt_string(zmq.LAST_ENDPOINT),
               "--status", self.status_socket.getsockopt_string(zmq.LAST_ENDPOINT), "--config", json.dumps(settings)]
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads)}
        with open(self.log_path, "ab") as logfile:
            self.proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_below_and_bound(cfg.nice) if os.name == "posix" else None)
        self.status: dict[str, Any] = {"state": "starting"}
        self.pairs_sent = 0
        self.pairs_missed = 0  # the worker was busy
        self.pairs_bright = 0  # served by the model's bright network, which the worker does not train
        self.bright: Callable[[np.ndarray], bool] | None = None
        """Whether a frame goes to the served model's bright network (None: it has none)."""
        self.swaps = 0
        self._run = input_frames + 1  # frames per message: the window and the frame after it
        self._recent: deque[Message] = deque(maxlen=self._run)
        self._count = 0
        log.info("fine-tuning worker started (pid %d, log %s)", self.proc.pid, self.log_path)

    @classmethod
    def for_model(cls, ctx: zmq.Context, denoiser: Denoiser, cfg: FinetuneConfig,
                  worker: Sequence[str] | None) -> FinetuneLink:
        """The link for the served model (one frame or K, as its card says), saving candidates in ``cfg.out``
        (default: the model folder's parent)."""
        if not (denoiser.card.run_dir / WEIGHTS_NAME).exists():
            what = ("a BioImage Model Zoo package (its exports only)"
                    if denoiser.card.training.get("source") == "bioimageio" else f"a folder without {WEIGHTS_NAME}")
            raise ValueError(f"finetune: expected a model trained by `n2n train` (its PyTorch weights, "
                             f"{WEIGHTS_NAME}), got {what}: {denoiser.card.run_dir}")
        if worker is None:
            raise ValueError("finetune: expected the command that runs the fine-tuning worker (Server(..., "
                             "finetune_worker=trainer.live.worker_command()); n2n serve gives it), got none")
        run_dir = denoiser.card.run_dir
        link = cls(ctx, run_dir, cfg, Path(cfg.out) if cfg.out else run_dir.resolve().parent, worker,
                   denoiser.input_frames)
        if denoiser.bright is not None:  # (its candidates keep the bright network as it is: trainer.live)
            link.bright = denoiser.serves_bright
        return link

    def offer(self, msg: Message) -> None:
        """A frame just served: every ``every`` frames, it and the frames before it (K of them for a K-frame model,
        one for a single-frame model; consecutive ``seq``, one shape and dtype) go to the worker, unless it is
        busy, or the frame went to the model's bright network (the worker trains the first network: counted in
        ``pairs_bright``)."""
        self._recent.append(msg)
        self._count += 1
        if len(self._recent) < self._run or self._count % self.cfg.every or self.proc.poll() is not None:
            return
        run = list(self._recent)
        first = run[0]
        if first.seq is None or any(m.pixels.shape != first.pixels.shape or m.pixels.dtype != first.pixels.dtype
                                    or m.seq != first.seq + i for i, m in enumerate(run)):
            return
        if self.bright is not None and self.bright(run[-1].pixels):  # not the first network's frames: not its pairs
            self.pairs_bright += 1
            return
        try:
            self.frames.send_multipart(encode_pair(*(m.pixels for m in run), seq=first.seq), zmq.NOBLOCK,
                                       copy=False)
            self.pairs_sent += 1
        except zmq.Again:
            self.pairs_missed += 1

    def poll(self) -> str | None:
        """Read the worker's status messages; the path of a new candidate model, if it saved one."""
        candidate = None
        while True:
            try:
                status = self.status_socket.recv_json(zmq.NOBLOCK)
            except zmq.Again:
                break
            if isinstance(status, dict):
                candidate = status.pop("candidate", None) or candidate
                self.status = status
        if self.proc.poll() is not None and not self.status.get("state", "").startswith("stopped"):
            self.status = {**self.status, "state": f"stopped (worker exit {self.proc.returncode}; see "
                                                  f"{self.log_path})"}
            log.warning("the fine-tuning worker ended (exit %s); serving goes on: see %s", self.proc.returncode,
                        self.log_path)
        return candidate

    def swapped(self) -> None:
        """A candidate of the worker's was swapped in."""
        self.swaps += 1

    def snapshot(self) -> dict[str, Any]:
        return {**self.status, "pairs_sent": self.pairs_sent, "pairs_missed": self.pairs_missed,
                "pairs_bright": self.pairs_bright,
                "swaps": self.swaps, "worker_pid": self.proc.pid}

    def close(self) -> None:
        stop_process(self.proc, timeout=10)
        self.frames.close(linger=0)
        self.status_socket.close(linger=0)
