"""The ``n2n`` command: the app, its global options and the entry point. Each subcommand loads its YAML
config, applies flag overrides, validates again, and (with ``--dry-run``) prints the resolved config
without running; the subcommands live in ``n2n/commands/``, what they share in ``n2n/command.py``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.logging import RichHandler

from n2n.command import N2NGroup, console, out, print_error
from n2n.commands import ALL

__all__ = ["app", "expand_multi_value", "main", "version"]

app = typer.Typer(
    name="n2n",
    help="n2n-live: Noise2Noise denoising for live fluorescence microscopy.",
    cls=N2NGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Options that take one or more values (``n2n train --data A.tif B.tif``), per subcommand.
MULTI_VALUE_OPTIONS = {"train": ("--data", "--reference")}


def version() -> str:
    """The installed n2n-live version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("n2n-live")
    except PackageNotFoundError:
        from n2n import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        out.print(f"n2n-live {version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    _version: Annotated[bool, typer.Option("--version", help="Print the n2n-live version and exit.",
                                           callback=_print_version, is_eager=True)] = False,
) -> None:
    logger = logging.getLogger("n2n")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=False))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


for _command in ALL:
    _command.register(app)


def expand_multi_value(argv: Sequence[str]) -> list[str]:
    """Turn ``--data A B`` into ``--data A --data B`` for the subcommands whose options
    take several files; other subcommands' arguments pass unchanged (so a stray second
    file is an error there, not silently dropped)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    multi = MULTI_VALUE_OPTIONS.get(command or "", ())
    result: list[str] = []
    current: str | None = None
    for arg in argv:
        if arg.startswith("-"):
            current = arg if arg in multi else None
            result.append(arg)
        elif current is not None and result[-1] != current:
            result += [current, arg]
        else:
            result.append(arg)
    return result


def _click_exceptions() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...],
                                  tuple[type[BaseException], ...]]:
    """(usage errors, "no arguments: show help", aborts) of the click typer runs on: recent typer releases
    carry their own copy of click, older ones use the click package."""
    import click

    usage: list[type[BaseException]] = [click.UsageError]
    no_args: list[type[BaseException]] = []
    abort: list[type[BaseException]] = [click.Abort]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        pass
    else:
        usage.append(vendored.UsageError)
        no_args.append(vendored.NoArgsIsHelpError)
        abort.append(typer.Abort)
    no_args += [e for e in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if e is not None]
    return tuple(usage), tuple(no_args), tuple(abort)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``n2n``). A flag the command line cannot parse (a missing required option, a
    value of the wrong type, an unknown option or command) is one ``error:`` line too, exit status 2."""
    args = expand_multi_value(sys.argv[1:] if argv is None else argv)
    usage, no_args, abort = _click_exceptions()
    try:
        code = app(args=args, prog_name="n2n", standalone_mode=False)
    except no_args as exc:
        ctx = getattr(exc, "ctx", None)
        out.print(ctx.get_help() if ctx is not None else "n2n --help", markup=False, highlight=False)
        sys.exit(0)
    except usage as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "n2n"
        print_error(f"{where}: {exc.format_message()} (see `{where} --help`)")  # type: ignore[attr-defined]
        sys.exit(2)
    except abort:  # Ctrl-C before a command had started
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
