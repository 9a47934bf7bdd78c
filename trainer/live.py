"""Fine-tuning on the live stream (``n2n serve --finetune``): the worker process.

The server sends it pairs of consecutive raw frames, sampled across the session (one pair every ``every``
frames), over a ZeroMQ socket it never waits on; for a K-frame model, runs of K + 1 consecutive frames (a window
and the frame after it). The worker keeps them in a bounded ring, one pair in ``val_every`` held out for
validation, and in rounds continues training the serving model from its weights on random patches of the
training pairs (Noise2Noise: frame t predicts t+1 and back; a K-frame model frames t−K+1 … t, and the run
reversed, with windows of one frame repeated as often as its training had them). After each round it scores the
candidate and the serving weights by the N2N loss on the held-out pairs, which ranks models as the error to the
clean image does, up to a constant. A candidate better by ``margin`` is saved as a run folder of its own (weights,
ONNX, card with provenance: the frames' seq range and time) and offered to the server, which swaps it in between
two frames. Its status (pairs, steps, losses, swaps) goes back to the server's stats. The worker runs at a lower
priority with its own thread count; the server outlives it::

    python -m trainer.live --model RUN --out DIR --frames ADDR --status ADDR --config JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from streamer.core.card import ONNX_NAME
from streamer.core.messages import decode_pair

__all__ = ["PairRing", "main", "worker_command"]

log = logging.getLogger("n2n.finetune")


def worker_command() -> list[str]:
    """The command that runs this worker: what a server with fine-tuning on is given to start it
    (:class:`streamer.server.finetune.FinetuneLink` adds its arguments)."""
    return [sys.executable, "-m", "trainer.live"]


class PairRing:
    """Runs of consecutive frames (pairs; K + 1 frames for a K-frame model), at most ``capacity`` (the oldest go
    first), one in ``val_every`` held out."""

    def __init__(self, capacity: int, val_every: int) -> None:
        n_val = max(2, capacity // val_every)
        self.train: deque[tuple[np.ndarray, ...]] = deque(maxlen=max(1, capacity - n_val))
        self.val: deque[tuple[np.ndarray, ...]] = deque(maxlen=n_val)
        self.val_every = val_every
        self.seen = 0
        self.seqs: deque[int] = deque(maxlen=capacity)
        self.first_seq: int | None = None

    def add(self, frames: tuple[np.ndarray, ...], seq: int | None = None) -> None:
        if len(frames) < 2 or any(f.shape != frames[0].shape for f in frames):
            raise ValueError(f"expected two or more frames of one shape, got {[f.shape for f in frames]}")
        if self.train and (frames[0].shape != self.train[0][0].shape or len(frames) != len(self.train[0])):
            self.train.clear()  # another frame size: start over
            self.val.clear()
        self.seen += 1
        (self.val if self.seen % self.val_every == 0 else self.train).append(tuple(frames))
        if seq is not None:
            self.seqs.append(seq)
            self.first_seq = seq if self.first_seq is None else self.first_seq

    def __len__(self) -> int:
        return len(self.train) + len(self.val)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for run in [*self.train, *self.val] for f in run)


class Tuner:
    """The serving model's weights, trained on from the ring; candidates scored against the serving ones."""

    def __init__(self, run_dir: Path, cfg: dict[str, Any]) -> None:
        import torch

        from streamer.core.card import ModelCard
        from trainer.inference import load_weights

        self.cfg = cfg
        self.run_dir = run_dir
        self.card = ModelCard.load(run_dir)
        self.k = self.card.input_frames
        data = ((self.card.training or {}).get("config") or {}).get("data") or {}
        self.repeated = float(data.get("repeated_windows", 0.0)) if self.k > 1 else 0.0  # as it was trained
        self.net, self.norm = load_weights(run_dir)
        torch.set_num_threads(int(cfg["threads"]))
        self.serving = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.opt = torch.optim.Adam(self.net.parameters(), lr=float(cfg["learning_rate"]))
        self.rng = np.random.default_rng(0)
        self.steps = 0

    def _normed(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.norm.normalize(x.astype(np.float32)), np.float32)

    def _window(self, run: tuple[np.ndarray, ...], rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """A training window of a run of K + 1 frames (K = 1: a pair): the model's input frames (oldest first) and
        the Noise2Noise target, the run reversed half the time and the input one frame repeated at the model's
        training rate of such windows."""
        if rng.random() < 0.5:
            run = run[::-1]
        inputs = list(run[:self.k])
        if self.repeated and rng.random() < self.repeated:
            inputs = [inputs[-1]] * self.k
        return inputs, run[self.k]

    def loss_of(self, state: dict[str, Any], runs: list[tuple[np.ndarray, ...]]) -> float:
        """N2N loss of ``state`` on ``runs`` (both directions), in the model's normalised units."""
        import torch

        keep = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(state)
        self.net.eval()
        crop = int(self.cfg["val_crop"])
        losses = []
        with torch.no_grad():
            for run in runs:
                h, w = run[0].shape
                m = self.net.size_multiple
                ch, cw = min(h, crop) // m * m, min(w, crop) // m * m
                r0, c0 = (h - ch) // 2, (w - cw) // 2
                cut = [self._normed(f[r0:r0 + ch, c0:c0 + cw]) for f in run]
                x = torch.from_numpy(np.stack([np.stack(cut[:self.k]), np.stack(cut[::-1][:self.k])]))
                y = self.net(x)
                losses.append(float(torch.mean((y[0, 0] - torch.from_numpy(cut[self.k])) ** 2)
                                    + torch.mean((y[1, 0] - torch.from_numpy(cut[-1 - self.k])) ** 2)) / 2)
        self.net.load_state_dict(keep)
        return float(np.mean(losses))

    def train_round(self, runs: list[tuple[np.ndarray, ...]], between: Any = None) -> float:
        """``steps`` optimiser steps on random patches of ``runs`` (random direction, flips, rotations);
        ``between()`` is called every 10 steps (the worker takes the pairs that arrived meanwhile)."""
        import torch

        self.net.train()
        p, bs = int(self.cfg["patch_size"]), int(self.cfg["batch_size"])
        total = 0.0
        for _ in range(int(self.cfg["steps"])):
            xs, ys = [], []
            for _ in range(bs):
                inputs, target = self._window(runs[int(self.rng.integers(len(runs)))], self.rng)
                h, w = target.shape
                r, c = int(self.rng.integers(0, h - p + 1)), int(self.rng.integers(0, w - p + 1))
                k = int(self.rng.integers(4))
                xs.append(np.stack([self._normed(np.ascontiguousarray(np.rot90(f[r:r + p, c:c + p], k)))
                                    for f in inputs]))
                ys.append(self._normed(np.ascontiguousarray(np.rot90(target[r:r + p, c:c + p], k))))
            x = torch.from_numpy(np.stack(xs))
            y = torch.from_numpy(np.stack(ys)[:, None])
            loss = torch.mean((self.net(x) - y) ** 2)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += float(loss.detach())
            self.steps += 1
            if between is not None and self.steps % 10 == 0:
                between()
        self.net.eval()
        return total / max(1, int(self.cfg["steps"]))

    def save(self, out: Path, provenance: dict[str, Any]) -> Path:
        """The current weights as a run folder: model.pt, model.onnx and a card naming where they came from (and a
        copy of the model's bright network, which the fine-tuning leaves as it was)."""
        from streamer.core.card import ModelCard
        from trainer.card import add_artifact
        from trainer.export import export_onnx
        from trainer.inference import save_weights

        out.mkdir(parents=True, exist_ok=False)
        save_weights(out, self.net, self.norm)
        card = self.card.model_dump(mode="json")
        card.update(name=out.name, artifacts={})
        card["training"] = {**(card.get("training") or {}), "finetuned": provenance}
        if self.card.bright_expert is not None:  # frames bright enough for it stay with the bright network as it was
            import shutil

            shutil.copytree(self.card.run_dir / self.card.bright_expert.path, out / self.card.bright_expert.path)
        ModelCard.model_validate(card).save(out)
        add_artifact(out, export_onnx(self.net, out / ONNX_NAME))
        return out


def run_worker(model: Path, out: Path, frames_address: str, status_address: str, cfg: dict[str, Any]) -> None:
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 4)
    pull.connect(frames_address)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 16)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(status_address)
    tuner = Tuner(model, cfg)
    ring = PairRing(int(cfg["ring_pairs"]), int(cfg["val_every"]))
    state: dict[str, Any] = {"state": "collecting", "pairs": 0, "steps": 0, "rounds": 0, "val_serving": None,
                             "val_candidate": None, "candidates": 0, "ring_mb": 0.0, "pid": os.getpid()}
    serving_dir = model

    def tell(**extra: Any) -> None:
        state.update(extra, steps=tuner.steps, pairs=ring.seen, ring_mb=round(ring.nbytes / 2**20, 1))
        try:
            push.send_json(state, zmq.NOBLOCK)
        except zmq.Again:
            pass

    parent = os.getppid()

    def take(wait_ms: int = 0) -> None:
        """Every pair that has arrived into the ring (and an end, when the server has gone)."""
        if os.getppid() != parent:  # the server is gone: nobody to serve a candidate to
            log.info("the server (pid %d) has gone: stopping", parent)
            raise SystemExit(0)
        while pull.poll(wait_ms):
            ring.add(*decode_pair(pull.recv_multipart()))
            wait_ms = 0

    tell()
    try:
        while True:  # until the server stops it (SIGTERM) or is gone
            take(100 if len(ring.train) < int(cfg["min_pairs"]) else 0)
            if len(ring.train) < int(cfg["min_pairs"]) or len(ring.val) < 2:
                tell(state="collecting")
                continue
            tell(state="training")
            train_loss = tuner.train_round(list(ring.train), take)
            val = list(ring.val)
            serving, candidate = tuner.loss_of(tuner.serving, val), tuner.loss_of(tuner.net.state_dict(), val)
            state["rounds"] += 1
            tell(val_serving=round(serving, 6), val_candidate=round(candidate, 6), train_loss=round(train_loss, 6))
            if candidate < serving * (1.0 - float(cfg["margin"])):
                now = datetime.now(timezone.utc).isoformat(timespec="seconds")
                path = tuner.save(out / f"{model.name}-live-{state['candidates'] + 1:03d}",
                                  {"from": str(serving_dir), "stream_seq": [ring.first_seq, ring.seqs[-1] if
                                   ring.seqs else None], "pairs_seen": ring.seen, "steps": tuner.steps,
                                   "val_loss": candidate, "serving_val_loss": serving, "time": now})
                tuner.serving = {k: v.detach().clone() for k, v in tuner.net.state_dict().items()}
                serving_dir = path
                state["candidates"] += 1
                tell(candidate=str(path))
                state.pop("candidate", None)
    finally:
        push.close(linger=1000)
        pull.close(linger=0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--config", required=True, help="the finetune settings as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s finetune %(message)s")
    run_worker(args.model, args.out, args.frames, args.status, json.loads(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
