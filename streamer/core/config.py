"""Configuration's foundation: the loader every command uses and the base classes of every config.

Each command's own configuration lives beside the code it configures (``streamer.server.ServeConfig``,
``trainer.config.TrainConfig``, ...); they are pydantic v2 models read from the YAML files in ``configs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["CONFIG_VERSION", "NULL", "ConfigError", "Strict", "Versioned", "load_config", "save_config", "user_folder"]

CONFIG_VERSION = 1


def user_folder(override: str, xdg: str, default: str) -> Path:
    """A per-user folder of n2n-live: ``$override``, else ``$xdg/n2n-live``, else ``~/default/n2n-live`` (the cache:
    ``N2N_CACHE_DIR``, ``XDG_CACHE_HOME``, ``.cache``; the configuration: ``N2N_CONFIG_DIR``, ``XDG_CONFIG_HOME``,
    ``.config``)."""
    import os

    env = os.environ.get(override)
    if env:
        return Path(env)
    base = os.environ.get(xdg)
    return (Path(base) if base else Path.home() / default) / "n2n-live"


class _Null:
    """An override that sets a key to null (``--set key=null``); a plain None override means "not given"."""

    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()


class ConfigError(ValueError):
    """A configuration is missing, malformed or invalid. The message is one line naming where the bad value
    came from (the flag that set it, else the file and key), what was expected and what came."""

    @classmethod
    def from_validation(cls, exc: ValidationError, model: type[BaseModel], path: Path | None,
                        origins: dict[str, str]) -> ConfigError:
        """Pydantic's errors in our words, on one line: the first, then the others (``and N more: ...``, up to
        five of them listed, so that one run shows every typo to fix)."""
        messages = list(dict.fromkeys(
            cls._describe(tuple(str(p) for p in e["loc"]), e["type"], e["msg"], dict(e.get("ctx") or {}),
                          e.get("input"), model, path, origins)
            for e in exc.errors(include_url=False)))
        more = len(messages) - 1
        listed = "; ".join(messages[1:6]) + ("; ..." if more > 5 else "")
        return cls(messages[0] + (f" (and {more} more error{'s' if more > 1 else ''}: {listed})" if more else ""))

    @classmethod
    def _describe(cls, loc: tuple[str, ...], kind: str, msg: str, ctx: dict, value: object,
                  model: type[BaseModel], path: Path | None, origins: dict[str, str]) -> str:
        got = f", got {cls._show(value)}"
        if kind == "extra_forbidden":  # an unknown key: name the keys its section takes
            import difflib

            section = cls._model_at(model, loc[:-1])
            keys = list(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(loc[-1], keys, n=1)
            what = (f"expected one of the keys {', '.join(keys)}, got {loc[-1]!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else ""))
            key = ".".join(loc)  # the flag that set this key, or one below it (--set nope.x=1 makes 'nope')
            flag = origins.get(key) or next((f for k, f in origins.items() if k.startswith(key + ".")), None)
            return f"{flag}: {what}" if flag else cls._where(path, loc[:-1], what)
        bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
        if kind in bounds:
            what = f"expected a number {bounds[kind]} {next(iter(ctx.values()), '?')}{got}"
        elif kind == "missing":
            what = "expected a value for this required key, got none"
        elif kind in ("value_error", "assertion_error"):  # our validators say what they expected and got
            what = msg.split(", ", 1)[-1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
        elif "should be " in msg or "should have " in msg:
            rest = msg.split("should be ", 1)[-1] if "should be " in msg else msg.split("should have ", 1)[-1]
            if kind.endswith(("_parsing", "_type")):
                rest = rest.split(", ", 1)[0]  # "a valid integer, unable to parse string as an integer"
            what = f"expected {rest}{got}"
        else:
            what = f"{msg}{got}"
        for depth in range(len(loc), 0, -1):  # a value set by a flag (or a section set whole by one)
            flag = origins.get(".".join(loc[:depth]))
            if flag:
                deeper = cls._key(loc[depth:])
                return f"{flag}: {deeper + ': ' if deeper else ''}{what}"
        # a check across keys (a validator of the section at loc): name the flags that set keys inside it too
        inside = sorted({f for k, f in origins.items() if not loc or k.startswith(".".join(loc) + ".")})
        return cls._where(path, loc, what, inside)

    @staticmethod
    def _key(loc: tuple[str, ...]) -> str:
        """``('model', 'filters', '1')`` → ``model.filters[1]``."""
        return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")

    @classmethod
    def _where(cls, path: Path | None, loc: tuple[str, ...], what: str, flags: list[str] | None = None) -> str:
        sources = ([str(path)] if path is not None else []) + ([", ".join(flags)] if flags else [])
        return ": ".join([p for p in (" with ".join(sources), cls._key(loc)) if p] + [what])

    @staticmethod
    def _show(value: object) -> str:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    @staticmethod
    def _model_at(model: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
        """The pydantic model of the section at ``loc`` (None where it is not a model)."""
        from typing import get_args

        current: type[BaseModel] | None = model
        for part in loc:
            field = current.model_fields.get(part) if current is not None else None
            if field is None:
                return None
            options = (field.annotation, *get_args(field.annotation))
            current = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
        return current


class Strict(BaseModel):
    """A configuration section: unknown keys are refused, every field documented, assignments checked."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class Versioned(Strict):
    """A whole configuration file: a section with a schema version."""

    version: Literal[1] = 1
    """Configuration schema version."""


C = TypeVar("C", bound=BaseModel)


def load_config(cls: type[C], path: str | Path | None, *, origins: dict[str, str] | None = None,
                **overrides: object) -> C:
    """Load ``cls`` from a YAML file (or defaults), apply dotted-key overrides, validate.

    ``origins`` names where an override came from (``{"format": "--format"}``): an error in a value set
    there names the flag instead of the file. Every error is a :class:`ConfigError` of one line.
    """
    origins = origins or {}
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "\0"
        if "\0" in text:
            raise ConfigError(f"{path}: expected a YAML config (text), got a binary file") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
        if not isinstance(loaded, dict):
            if loaded is None:
                content = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
                came = "null" if content else "an empty file"
            else:
                kind = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
                came = f"{kind.get(type(loaded), type(loaded).__name__)} ({ConfigError._show(loaded)})"
            raise ConfigError(f"{path}: expected a mapping of settings (key: value lines), got {came}")
        data = loaded
    for key, value in overrides.items():
        if value is None:
            continue
        if value is NULL:
            value = None
        node = data
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            if p not in node:
                node[p] = {}
            child = node[p]
            if not isinstance(child, dict):
                where = ".".join(parents[: i + 1])
                label = f" ({origins[key]})" if key in origins else ""
                raise ConfigError(f"{path or 'settings'}: {where}: expected a mapping of settings to set "
                                  f"{key}{label}, got {child!r}")
            node = child
        node[leaf] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, cls, Path(path) if path is not None else None, origins) from None


def save_config(config: BaseModel, path: str | Path) -> None:
    """Write a config as YAML that :func:`load_config` reads back unchanged."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


