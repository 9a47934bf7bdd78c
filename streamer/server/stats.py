"""Rolling statistics of the server: frame rates, latency percentiles, per-stage times, counters."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, cast

from ..core.messages import StatsMessage
from ..core.modelset import NO_MODEL_FLAG
from ..core.summary import RateMeter, percentiles
from ..denoiser import FLAG_FLOAT_PATH, is_raw

__all__ = ["MAX_NO_MODEL_CHANNELS", "OTHER_CHANNELS", "ServerStats"]

MAX_NO_MODEL_CHANNELS = 256
"""Channels counted by name in ``no_model`` (a sender's names are not trusted to be few): the rest together."""
OTHER_CHANNELS = "(other channels)"


class ServerStats:
    """What the stats socket publishes; the server calls the ``on_*`` methods."""

    STAGES = ("queue", "preprocess", "infer", "postprocess", "send")

    def __init__(self, window: int = 1000) -> None:
        self.started = time.monotonic()
        self.frames_in = 0
        self.frames_out = 0
        self.requests = 0
        self.drops = 0
        self.drops_by_reason: Counter[str] = Counter()
        self.notices_dropped = 0  # error notices for pushed frames a full output could not take
        self.view_frames = 0  # raw | denoised pairs published to viewers
        self.errors: Counter[str] = Counter()
        self.queue_depth = 0
        self.swaps = 0
        self.batched_frames = 0
        self.history_resets: Counter[str] = Counter()
        """K-frame models: histories restarted, by reason (streamer/core/history.py)."""
        self.history_short = 0
        """K-frame models: frames denoised with fewer than K−1 frames of history (the oldest repeated)."""
        self.motion_fallbacks = 0
        """K-frame models: frames denoised alone because they moved against their history."""
        self.served_flags: Counter[str] = Counter()
        """Frames served with a flag from the Denoiser's checks, by flag (a frame may have several)."""
        self.served_float_path = 0
        """Frames denoised by the float32 model instead of the reduced precision one (out of its checked range)."""
        self.served_raw = 0
        """Frames served raw, not denoised: the denoised output failed a check, or no model serves their channel
        (any ``raw:`` flag)."""
        self.no_model: Counter[str] = Counter()
        """A model set: frames passed through raw because the set has no model for their channel, by channel
        (flag ``raw:no_model``; see :mod:`streamer.server.routes`)."""
        self.latency_ms: deque[float] = deque(maxlen=window)
        self.server_ms: deque[float] = deque(maxlen=window)
        self.stage_ms: dict[str, deque[float]] = {s: deque(maxlen=window) for s in self.STAGES}
        self.rate_in = RateMeter()
        self.rate_out = RateMeter()

    def on_received(self, n: int = 1) -> None:
        self.frames_in += n
        self.rate_in.tick(n=n)

    def on_dropped(self, n: int = 1, reason: str = "input") -> None:
        """Frames lost: at the input (live mode: a newer frame came), or after denoising (``slow_subscriber``:
        a lossless subscriber past its wait; ``stopping``)."""
        self.drops += n
        self.drops_by_reason[reason] += n

    def on_no_model(self, channel: str) -> None:
        """A frame of ``channel``, which no model of the set serves (passed through raw)."""
        if channel not in self.no_model and len(self.no_model) >= MAX_NO_MODEL_CHANNELS:
            channel = OTHER_CHANNELS
        self.no_model[channel] += 1

    def on_error(self, code: str) -> None:
        self.errors[code] += 1

    def on_done(self, stages: dict[str, int], capture_ns: int | None, request: bool = False,
                flags: tuple[str, ...] = ()) -> None:
        """Record one served frame from its stage timestamps (ns) and what the Denoiser's checks said of it."""
        self.frames_out += 1
        if flags:
            self.served_flags.update(set(flags))
            self.served_float_path += FLAG_FLOAT_PATH in flags
            self.served_raw += is_raw(flags)
        if request:
            self.requests += 1
        self.rate_out.tick()
        if NO_MODEL_FLAG in flags:  # passed through without a model: no stage ran, its times would pull the medians
            return
        ms = 1e-6
        self.stage_ms["queue"].append((stages["start"] - stages["received"]) * ms)
        self.stage_ms["preprocess"].append((stages["preprocessed"] - stages["start"]) * ms)
        self.stage_ms["infer"].append((stages["inferred"] - stages["preprocessed"]) * ms)
        self.stage_ms["postprocess"].append((stages["postprocessed"] - stages["inferred"]) * ms)
        self.stage_ms["send"].append((stages["sent"] - stages["postprocessed"]) * ms)
        self.server_ms.append((stages["sent"] - stages["received"]) * ms)
        # capture → sent, when the producer's clock is this host's (same machine); else server time
        if capture_ns is not None and 0 <= stages["sent"] - capture_ns < 3_600 * 10**9:
            self.latency_ms.append((stages["sent"] - capture_ns) * ms)
        else:
            self.latency_ms.append((stages["sent"] - stages["received"]) * ms)

    def snapshot(self, **extra: Any) -> StatsMessage:
        """The stats message now; ``extra``: what the server adds (mode, engine, peers, endpoints, ...)."""
        now = time.monotonic()
        seen = self.frames_out + self.drops
        return cast(StatsMessage, {
            "v": 1,
            "type": "stats",
            "time_ns": time.time_ns(),
            "uptime_s": round(now - self.started, 3),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "requests": self.requests,
            "fps_in": round(self.rate_in.rate(now), 2),
            "fps_out": round(self.rate_out.rate(now), 2),
            "latency_ms": percentiles(self.latency_ms),
            "server_ms": percentiles(self.server_ms),
            "stages_ms": {s: percentiles(v, (50,))["p50"] for s, v in self.stage_ms.items()},
            "drops": self.drops,
            "drops_by_reason": dict(self.drops_by_reason),
            "notices_dropped": self.notices_dropped,
            "view_frames": self.view_frames,
            "drop_fraction": round(self.drops / seen, 4) if seen else 0.0,
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "queue_depth": self.queue_depth,
            "swaps": self.swaps,
            "batched_frames": self.batched_frames,
            "history_resets": dict(self.history_resets),
            "history_short": self.history_short,
            "motion_fallbacks": self.motion_fallbacks,
            "served_float_path": self.served_float_path,
            "served_raw": self.served_raw,
            "served_flags": dict(self.served_flags),
            "no_model": dict(self.no_model),
            **extra,
        })
