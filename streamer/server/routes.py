"""A model per channel: which of the served models denoises a frame (:class:`~streamer.core.modelset.ModelSet`).

The server serves a model set: each distinct model of it is loaded once (a :class:`Lane`: its Denoiser and its
K-frame histories, since each model has its own K), and a frame goes to the lane of its channel
(:func:`~streamer.core.streams.channel_of`: ``meta.channel``, else ``meta.stream.channel``). A channel the set
gives no model to is passed through raw (:data:`~streamer.core.modelset.NO_MODEL_FLAG`), counted per channel and
said once, never guessed; one it does not name but a default serves (a preset renamed mid-session) is said once too.
A channel never takes another channel's model, nor its history (:class:`~.intake.Streams`). A set of one model for
every channel (``--model FOLDER``) routes without reading a frame's metadata at all: the per-frame cost of today's
one-model server.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..core.modelset import NO_MODEL_FLAG, ModelSet
from ..core.streams import channel_of
from ..denoiser import Denoiser
from ..protocol import Message
from .config import ServeConfig
from .intake import Streams
from .stats import ServerStats

__all__ = ["NO_CHANNEL", "Lane", "Routes"]

log = logging.getLogger("n2n.streamer")

MAX_ROUTED_CHANNELS = 1024
"""Channel names whose lane is remembered (a sender's names are not trusted to be few: beyond, looked up each time)."""
MAX_SAID_CHANNELS = 64
"""Channels without a model said in the log by name; beyond, one line says that more came."""
NO_CHANNEL = "(none)"
"""How a frame that names no channel is counted and said, when the set has no default for it."""


class Lane:
    """One model of the set as the server serves it: ``model`` (the folder or package as the set names it), its
    Denoiser, its frame histories (its own K, never another model's) and the channels the set routes to it
    (``"*"``: the default, any other channel)."""

    def __init__(self, model: str, denoiser: Denoiser, streams: Streams, channels: Sequence[str]) -> None:
        self.model = model
        self.denoiser = denoiser
        self.streams = streams
        self.channels = list(channels)

    def summary(self) -> dict[str, Any]:
        """What the status says of this model: its card's name, folder, engine, precision and K (and, with a bright
        network, :meth:`Denoiser.bright_summary`)."""
        den = self.denoiser
        out = {"model": den.card.name, "model_dir": str(den.card.run_dir), "engine": den.engine.name,
               "precision": den.engine.precision, "input_frames": den.input_frames, "averaged": den.averaged}
        bright = den.bright_summary()
        if bright is not None:
            out["bright"] = bright
        return out


class Routes:
    """The lanes of ``models`` (``denoisers``: one per distinct model, in :attr:`ModelSet.models` order) and the
    rule from a frame to its lane (:meth:`lane`; None: no model, the frame goes back raw)."""

    def __init__(self, models: ModelSet, denoisers: Sequence[Denoiser], config: ServeConfig,
                 stats: ServerStats) -> None:
        specs = models.models
        if len(denoisers) != len(specs):
            raise ValueError(f"expected one Denoiser per model of the set ({len(specs)}), got {len(denoisers)}")
        self.models = models
        self._stats = stats
        self.lanes = [Lane(spec, den, Streams(den.input_frames, config, stats),
                           [*(c for c, m in models.channels.items() if m == spec),
                            *(["*"] if models.default == spec else [])])
                      for spec, den in zip(specs, denoisers)]
        self._by_model = {lane.model: lane for lane in self.lanes}
        self.primary = self.lanes[0]
        """The first model of the set: what the status's one-model fields (model, engine, precision) describe."""
        self.only: Lane | None = self.primary if len(self.lanes) == 1 and models.default is not None else None
        """The lane of every frame, whatever its channel (a set of one model and a default): no routing per frame."""
        self._by_channel: dict[str | None, Lane | None] = {}
        self._said: set[str] = set()
        self._said_default: set[str] = set()
        self.uniform = self.only is not None
        """Whether :attr:`min_side` and :attr:`fixed_shape` are every frame's limits (else checked per lane)."""

    @property
    def min_side(self) -> int:
        """The smallest side a frame may have, checked as it is decoded: the one model's, as it is now (a swap
        replaces it); a set of several: any (a raw frame may be of any size; its model's limits are checked once it
        is routed, see :attr:`uniform`)."""
        return self.only.denoiser.min_side if self.only is not None else 1

    @property
    def fixed_shape(self) -> tuple[int, int] | None:
        """The only frame shape the one model takes (a zoo package with fixed sizes), as it is now; else None."""
        return self.only.denoiser.fixed_shape if self.only is not None else None

    @property
    def single(self) -> bool:
        """One model serves (swap and fine-tuning act on it)."""
        return len(self.lanes) == 1

    def lane(self, msg: Message) -> Lane | None:
        """The lane ``msg``'s channel goes to (the set's ``model_for``); None: the set has no model for it."""
        if self.only is not None:
            return self.only
        channel = channel_of(msg.header.get("meta"))
        try:
            return self._by_channel[channel]
        except KeyError:
            pass
        model = self.models.model_for(channel)
        lane = None if model is None else self._by_model[model]
        if len(self._by_channel) < MAX_ROUTED_CHANNELS:
            self._by_channel[channel] = lane
        if lane is not None and channel is not None and channel not in self.models.channels:
            self._say_default(channel, model)
        return lane

    def _say_default(self, channel: str, model: str | None) -> None:
        """Once per channel: a channel the set does not name (a preset renamed mid-session, a new one) goes to the
        default model, not to the model of the channel it was."""
        if channel in self._said_default or len(self._said_default) >= MAX_SAID_CHANNELS:
            return
        self._said_default.add(channel)
        routed = ", ".join(f"{c} → {m}" for c, m in self.models.channels.items())
        log.info("channel %r is not named in the model set (%s): its frames are denoised by the default model, %s",
                 channel, routed, model)

    def no_model(self, msg: Message) -> str:
        """A frame that no model of the set serves: counted by channel, said once per channel; its channel."""
        channel = channel_of(msg.header.get("meta"))
        name = NO_CHANNEL if channel is None else channel
        self._stats.on_no_model(name)
        if name not in self._said and len(self._said) <= MAX_SAID_CHANNELS:
            self._said.add(name)  # (one past the limit: the line that says more came, then nothing)
            routed = ", ".join(f"{c} → {m}" for c, m in self.models.channels.items())
            if len(self._said) > MAX_SAID_CHANNELS:
                log.warning("more channels without a model in the set (%s): their frames are passed through raw, "
                            "flagged %s (counted in the stats' no_model)", routed, NO_MODEL_FLAG)
            elif channel is None:
                log.warning("frames that name no channel (meta.channel) have no model in the set (%s; no default): "
                            "they are passed through raw, flagged %s", routed, NO_MODEL_FLAG)
            else:
                log.warning("channel %r has no model in the set (%s): its frames are passed through raw, flagged %s",
                            channel, routed, NO_MODEL_FLAG)
        return name

    def replace(self, lane: Lane, denoiser: Denoiser) -> Denoiser:
        """``lane`` serves with ``denoiser`` from the next frame on (a swap), its histories afresh; the old one."""
        old, lane.denoiser = lane.denoiser, denoiser
        lane.streams.restart("swap", denoiser.input_frames)
        return old

    def info(self) -> dict[str, dict[str, Any]]:
        """Each channel the set names (and ``"*"``, the default, any other channel) → its model's summary."""
        out = {c: self._by_model[m].summary() for c, m in self.models.channels.items()}
        if self.models.default is not None:
            out["*"] = self._by_model[self.models.default].summary()
        return out

    def describe(self) -> str:
        """The routing in one line (``DAPI → runs/dapi, GFP → runs/gfp, any other channel → raw (no model)``)."""
        return self.models.describe()
