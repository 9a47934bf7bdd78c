"""What every ``python -m bench.NAME`` command shares: progress on stderr, a failure as one ``error:`` line
and exit status 2, the report's markdown table on stdout, the report as JSON where asked."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamer.core.card import CARD_NAME

__all__ = ["EXPECTED_ERRORS", "Progress", "comma_list", "parser", "progress_to_stderr", "require_model",
           "run_command", "write_json"]

Progress = Callable[[str], None]
"""Where a benchmark says what it is doing (one line at a time)."""

EXPECTED_ERRORS = (FileNotFoundError, ValueError, RuntimeError, TimeoutError)
"""Failures a command reports as one line (a missing model, a bad argument, an engine that cannot run)."""


def parser(module: str, doc: str | None, show_defaults: bool = False) -> argparse.ArgumentParser:
    """``python -m MODULE``'s parser, described by the first paragraph of the module's docstring;
    ``show_defaults``: each option's help ends with its default."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter if show_defaults else argparse.HelpFormatter)


def progress_to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def require_model(parser: argparse.ArgumentParser, model: Path, flag: str = "--model") -> None:
    """A usage error (exit 2, one line) unless ``model`` is a model folder."""
    if not (model / CARD_NAME).is_file():
        parser.error(f"{flag} {model}: expected a model folder made by `n2n train` (with model.json)")


def write_json(path: Path, report: Any) -> None:
    """``report`` as indented JSON at ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def run_command(measure: Callable[[], dict[str, Any]], table: Callable[[dict[str, Any]], str],
                json_path: Path | None = None) -> int:
    """Run ``measure``; print ``table`` of its report and write the JSON to ``json_path``. Returns the exit
    status: 0, or 2 after one ``error:`` line on stderr for an expected failure (no traceback)."""
    try:
        report = measure()
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    if json_path is not None:
        write_json(json_path, report)
    return 0
