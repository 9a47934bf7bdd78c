"""A model per channel: which model a frame's channel gets. One rule for every path that serves models.

Each channel of a multi-channel session is its own fluorophore, brightness and structure; a model trained on one
does not serve another (a one-channel model on a brighter channel clips, on a dimmer one it invents). A
:class:`ModelSet` names, for each channel (the Micro-Manager channel config, or a file's channel name or index),
the model folder or zoo package that serves it, and optionally a default for channels it does not name::

    n2n serve --model DAPI=runs/dapi --model GFP=runs/gfp
    n2n serve --model models.yaml                    # the same, from a file (what --per-channel training writes)
    n2n serve --model runs/n2n                       # one model for every channel: a set of one default

``models.yaml``::

    channels:
      DAPI: runs/dapi
      GFP: runs/gfp
    default: null        # a channel not named here: passed through raw (counted, marked), never guessed

:meth:`ModelSet.model_for` is the rule: the channel's own model, else the default, else None, which every caller
turns into a raw pass-through, counted, said once and marked in the frame's metadata (``raw:no_model``). A frame
that names no channel gets the default (a plain live view). Relative paths in a file are read from its folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MODEL_SET_SUFFIXES", "NO_MODEL_FLAG", "ModelSet", "ModelSetError", "is_model_set_file"]

NO_MODEL_FLAG = "raw:no_model"
"""The flag of a frame passed through raw because its channel has no model in the set."""
MODEL_SET_SUFFIXES = (".yaml", ".yml")
"""A ``--model`` value with one of these suffixes that is a file (not a zoo ``rdf.yaml``) is a model-set file."""
_MAX_SET_BYTES = 1 << 20
_MAX_CHANNELS = 256


class ModelSetError(ValueError):
    """A model set that cannot be read or is ambiguous; the message names what was expected and what came."""


@dataclass(frozen=True)
class ModelSet:
    """Channel name → model (a folder or a zoo package, as a path), and the ``default`` for any other channel."""

    channels: Mapping[str, str] = field(default_factory=dict)
    default: str | None = None

    def __post_init__(self) -> None:
        if not self.channels and self.default is None:
            raise ModelSetError("a model set needs at least one model: expected --model FOLDER or --model "
                                "CHANNEL=FOLDER, got none")

    # --- the rule ----------------------------------------------------------------------------------------------
    def model_for(self, channel: str | None) -> str | None:
        """The model serving ``channel``: its own, else the default; None: passed through raw (no model)."""
        if channel is not None and channel in self.channels:
            return self.channels[channel]
        return self.default

    @property
    def single(self) -> bool:
        """One model for every channel (today's ``--model FOLDER``)."""
        return not self.channels

    @property
    def models(self) -> list[str]:
        """Every distinct model, in order (the default last): each is loaded once, however many channels use it."""
        return list(dict.fromkeys([*self.channels.values(), *([self.default] if self.default else [])]))

    def describe(self) -> str:
        """One line: ``DAPI → runs/dapi, GFP → runs/gfp, any other channel → raw``."""
        parts = [f"{c} → {m}" for c, m in self.channels.items()]
        if self.channels:
            parts.append(f"any other channel → {self.default if self.default else 'raw (no model)'}")
        else:
            parts.append(f"every channel → {self.default}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"channels": dict(self.channels), "default": self.default}

    def save(self, path: str | Path) -> Path:
        """Write the set as a ``models.yaml`` (paths as given: relative ones are read from its folder)."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    # --- reading -----------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, specs: str | Path | Sequence[str | Path]) -> ModelSet:
        """From ``--model`` values: ``CHANNEL=MODEL`` (that channel's model), ``MODEL`` (the default, at most one),
        or one ``models.yaml`` file (alone). A channel named twice is refused."""
        if isinstance(specs, str | Path):
            specs = [specs]
        items = [str(s) for s in specs]
        if not items:
            raise ModelSetError("expected --model FOLDER or --model CHANNEL=FOLDER, got none")
        files = [s for s in items if is_model_set_file(s)]
        if files:
            if len(items) > 1:
                raise ModelSetError(f"expected one model-set file alone or CHANNEL=FOLDER values, got {files[0]} "
                                    f"with {len(items) - 1} other --model value(s)")
            return cls.load(files[0])
        channels: dict[str, str] = {}
        default: str | None = None
        for s in items:
            name, model = _split(s)
            if name is None:
                if default is not None:
                    raise ModelSetError(f"expected one model without a channel (the default), got {default} and "
                                        f"{model}: name the channel each serves (--model GFP={model})")
                default = model
            elif name in channels:
                raise ModelSetError(f"channel {name!r} is given twice (--model {name}={channels[name]} and "
                                    f"--model {name}={model}): expected one model per channel")
            else:
                channels[name] = model
        return cls(channels, default)

    @classmethod
    def load(cls, path: str | Path) -> ModelSet:
        """A ``models.yaml`` file (see the module docstring); relative paths are read from its folder."""
        path = Path(path)
        try:
            if path.stat().st_size > _MAX_SET_BYTES:
                raise ModelSetError(f"{path}: expected a model-set file under {_MAX_SET_BYTES >> 20} MiB, got "
                                    f"{path.stat().st_size} bytes")
            content = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ModelSetError(f"{path}: cannot read the model set ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ModelSetError(f"{path}: expected YAML (a model set), got unreadable text: "
                                f"{' '.join(str(exc).split())[:200]}") from None
        if not isinstance(content, Mapping) or not set(content) <= {"channels", "default"}:
            got = sorted(map(str, content)) if isinstance(content, Mapping) else type(content).__name__
            raise ModelSetError(f"{path}: expected a model set (keys 'channels' and 'default'), got {got}")
        channels = content.get("channels") or {}
        if not isinstance(channels, Mapping) or len(channels) > _MAX_CHANNELS or not all(
                isinstance(m, str | Path) for m in channels.values()):
            raise ModelSetError(f"{path}: expected 'channels' to map channel names to model folders (at most "
                                f"{_MAX_CHANNELS}), got {channels!r:.200}")
        default = content.get("default")
        if default is not None and not isinstance(default, str):
            raise ModelSetError(f"{path}: expected 'default' to be a model folder or null, got {default!r:.100}")
        base = path.resolve().parent
        return cls({str(c): _beside(base, m) for c, m in channels.items()}, _beside(base, default) if default else None)


def is_model_set_file(value: str | Path) -> bool:
    """``value`` names a model-set file (a YAML file that is not a zoo description)."""
    p = Path(str(value))
    return (p.suffix.lower() in MODEL_SET_SUFFIXES and p.is_file() and p.name != "rdf.yaml"
            and not p.name.endswith(".bioimageio.yaml"))


def _split(spec: str) -> tuple[str | None, str]:
    """``CHANNEL=MODEL`` → (channel, model); a plain path (or one that exists as given) → (None, path)."""
    name, sep, model = spec.partition("=")
    if not sep or Path(spec).exists() or "/" in name or "\\" in name:
        return None, spec
    name, model = name.strip(), model.strip()
    if not name or not model:
        raise ModelSetError(f"expected --model CHANNEL=FOLDER, got {spec!r}")
    return name, model


def _beside(base: Path, model: str | Path) -> str:
    p = Path(model).expanduser()
    return str(p if p.is_absolute() else base / p)
