"""What every ``n2n`` subcommand shares: the consoles, the edge where errors are rendered, its config model
and the flags that set its keys (so that ``--help`` shows the model's defaults and an error names the flag),
``--set``, ``--dry-run``, and the old spellings of renamed flags.

A subcommand is a function decorated with a :class:`Command`; ``n2n/cli.py`` registers them on the app.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from n2n.errors import UserError, one_line
from streamer.core.config import NULL, ConfigError, load_config

__all__ = ["AveragedOpt", "Command", "ConfigOpt", "DryRunOpt", "N2NCommand", "N2NGroup", "console", "log", "out",
           "parse_settings", "print_error", "warn"]

console = Console(stderr=True)
"""Progress, stages, warnings and errors (stderr)."""
out = Console()
"""Results: tables, dry-run configs (stdout)."""
log = logging.getLogger("n2n")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")]
AveragedOpt = Annotated[int | None, typer.Option(
    "--averaged", help="Each frame is the mean of N camera readouts (a confocal's line or frame averaging, a camera's "
                       "on-board averaging; not a sum/accumulation): the model's noise model is divided by N (models "
                       "with the camera's noise model).")]


def print_error(message: str) -> None:
    """The one line of a failure, on stderr (never wrapped, never read as markup)."""
    console.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), soft_wrap=True, highlight=False)


def warn(message: str) -> None:
    console.print(Text.assemble(("warning:", "bold yellow"), " ", one_line(message)), soft_wrap=True,
                  highlight=False)


def parse_settings(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as dotted-key overrides; values are YAML (numbers, lists, null...)."""
    import yaml

    settings: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: expected KEY=VALUE (e.g. --set model.depth=3), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise UserError(f"--set {key.strip()}: expected a YAML value, got {text!r} ({problem})") from None
        settings[key.strip()] = NULL if value is None else value
    return settings


def help_text(doc: str | None) -> str | None:
    """A command's docstring as ``--help`` shows it: each paragraph one line for the terminal to wrap (a docstring's
    own line breaks, made for the source's width, would break ``--help``'s lines mid-sentence)."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class Command:
    """One subcommand: its function, its config model (``"module:Class"``, imported only when needed), the
    flags that set the model's keys, the default text of options outside the model, and renamed flags
    (``{"--mode": "--target"}``: the old spelling still works for one release, with a warning)."""

    def __init__(self, config: str | None = None, flags: Mapping[str, str | tuple[str, ...]] | None = None,
                 defaults: Mapping[str, str] | None = None, deprecated: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.flags = {f: (k,) if isinstance(k, str) else tuple(k) for f, k in (flags or {}).items()}
        self.defaults = {"--config": "none", **(defaults or {})}
        self.deprecated = dict(deprecated or {})
        self.func: Callable[..., Any] | None = None

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        self.func = func
        return func

    def register(self, app: typer.Typer) -> None:
        assert self.func is not None, "decorate the command's function first"
        cls = type(f"{self.func.__name__.title()}Command", (N2NCommand,), {"spec": self})
        app.command(cls=cls, help=help_text(self.func.__doc__))(self.func)

    def model(self) -> type[BaseModel]:
        assert self.config is not None
        module, _, name = self.config.partition(":")
        model: type[BaseModel] = getattr(importlib.import_module(module), name)
        return model

    def load(self, path: Path | None, dry_run: bool, values: Mapping[str, object],
             settings: Mapping[str, object] | None = None) -> Any:
        """The config from ``path`` (or the defaults) with the flags given (``{"--frames": 7}``; None: not
        given) and ``--set`` settings on top, validated; with ``dry_run`` print it and exit."""
        overrides: dict[str, object] = {}
        origins: dict[str, str] = {}
        for flag, value in values.items():
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, list):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            for key in self.flags[flag]:
                overrides[key], origins[key] = value, flag
        for key, value in (settings or {}).items():  # --set wins over the named flags
            overrides[key], origins[key] = value, f"--set {key}"
        cfg = load_config(self.model(), path, origins=origins, **overrides)
        if dry_run:
            import yaml

            out.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="", highlight=False,
                      markup=False, soft_wrap=True)  # YAML, never wrapped
            raise typer.Exit(code=0)
        return cfg

    def default_text(self, flag: str, param: Any, defaults: BaseModel | None) -> str | None:
        """What ``--help`` shows as ``flag``'s default: the model's value for its key, or the text given."""
        if getattr(param, "is_flag", False) and not param.secondary_opts:
            return None  # a switch is off unless given
        if flag in self.defaults:
            return self.defaults[flag]
        if flag not in self.flags or defaults is None:
            return None
        value = functools.reduce(getattr, self.flags[flag][0].split("."), defaults)
        if isinstance(value, bool) and param.secondary_opts:  # --quick/--full: the switch that is on
            return str(param.opts[0] if value else param.secondary_opts[0])
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        if isinstance(value, float):
            return f"{value:g}"
        return "none" if value is None else str(value)


def _no_bool_type(params: Sequence[Any]) -> None:
    """A switch takes no value: show no ``<bool>`` type beside it."""
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""


class N2NCommand(TyperCommand):
    """A subcommand: renders a :class:`UserError` or :class:`ConfigError` as one line (exit status 2),
    accepts renamed flags' old spellings with a warning, and shows every option's default in ``--help``."""

    spec: Command

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_bool_type(self.params)
        self._described = False

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        renamed: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":
                renamed += args[i:]
                break
            name, eq, value = arg.partition("=")
            if name in self.spec.deprecated:
                new = self.spec.deprecated[name]
                warn(f"{name} is now {new}; the old spelling will be removed in the next release")
                arg = f"{new}{eq}{value}"
            renamed.append(arg)
        return list(super().parse_args(ctx, renamed))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (UserError, ConfigError) as exc:
            log.debug("error details", exc_info=exc)
            print_error(str(exc))
            raise typer.Exit(code=2) from None

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _no_bool_type([option])
        return option

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if not self._described:
            self._described = True
            defaults = self.spec.model()() if self.spec.config else None
            param: Any
            for param in self.params:
                flag = next((o for o in getattr(param, "opts", ()) if o.startswith("--")), None)
                text = self.spec.default_text(flag, param, defaults) if flag and not param.required else None
                if text is not None:
                    param.help = f"{param.help or ''} [dim]\\[default: {escape(text)}][/dim]".strip()
        super().format_help(ctx, formatter)


class N2NGroup(TyperGroup):
    """The ``n2n`` group: no ``<bool>`` beside its switches either."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_bool_type(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _no_bool_type([option])
        return option
