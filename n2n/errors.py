"""Failures a user can fix. Commands raise them; the CLI's edge (:class:`n2n.command.N2NCommand`) renders
each as one ``error: …`` line with exit status 2, so no command prints an error of its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["EXPECTED_ERRORS", "UserError", "one_line", "user_errors"]


class UserError(Exception):
    """Bad input or a refused result: the message names the file or flag, what was expected and what came."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)
"""What the library raises for bad input (ConfigError, StackError, CardError are ValueErrors; FileNotFoundError
and TimeoutError OSErrors; ExportError and EngineUnavailable RuntimeErrors)."""


@contextlib.contextmanager
def user_errors(*extra: type[BaseException], prefix: str = "") -> Iterator[None]:
    """Turn the expected failures of the calls inside (and ``extra`` types) into :class:`UserError`.

    Used around library calls only, so that a bug elsewhere still shows its traceback."""
    try:
        yield
    except UserError:
        raise
    except (*EXPECTED_ERRORS, *extra) as exc:
        raise UserError(f"{prefix}{exc}") from exc


def one_line(message: str) -> str:
    """A message of several lines (a library's, a parser's) as one line."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
