"""File and folder names made from free text (a channel's name, a stream's place): one rule, used everywhere."""

from __future__ import annotations

import re

__all__ = ["safe_name"]

_UNSAFE = re.compile(r"[^\w.-]+")


def safe_name(text: str) -> str:
    """``text`` with each run of characters other than letters, digits, ``_``, ``.`` and ``-`` made one ``_``
    (``"GFP / 488"`` → ``"GFP_488"``): a name any file system takes, never a path (no separator); a name of dots
    only, or empty (``".."``, ``"."``, ``""``: path components), is ``"_"``."""
    name = _UNSAFE.sub("_", text)
    return "_" if name.strip(".") == "" else name
