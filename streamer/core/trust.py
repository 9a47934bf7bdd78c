"""Which TorchScript files may run: a TorchScript file is a program (it can read and write any file the user can),
ONNX and OpenVINO files are graphs of tensor operations. So n2n-live runs a TorchScript file only if this install
wrote it itself (``n2n train``, ``n2n export``: :func:`register` records its sha256), or if the user says so for
this run (``--trust-code``). A downloaded model (a zoo package, a run folder from elsewhere) is served from its ONNX
weights.

The list of digests is a text file, one sha256 a line (then the file it was written as, for the reader), in the
user's configuration folder: ``$N2N_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/n2n-live``, else ``~/.config/n2n-live``.
Whoever can write that folder can run code as the user anyway; nothing else adds to the list.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .config import user_folder

__all__ = ["TRUST_FILE", "config_dir", "is_trusted", "register", "refusal", "trusted_digests"]

TRUST_FILE = "trusted_torchscript.txt"
"""In :func:`config_dir`: the sha256 of every TorchScript file this install wrote."""
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def config_dir() -> Path:
    """``$N2N_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/n2n-live``, else ``~/.config/n2n-live``."""
    return user_folder("N2N_CONFIG_DIR", "XDG_CONFIG_HOME", ".config")


def trusted_digests() -> set[str]:
    """The sha256 digests of the TorchScript files this install wrote (empty when none yet)."""
    try:
        text = (config_dir() / TRUST_FILE).read_text(errors="replace")
    except OSError:
        return set()
    return {word for line in text.splitlines() if (word := line.split(" ", 1)[0].strip()) and _DIGEST.match(word)}


def is_trusted(digest: str | None) -> bool:
    """Whether this install wrote the TorchScript file of this sha256."""
    return bool(digest) and str(digest).lower() in trusted_digests()


def register(digest: str, written_as: str | Path = "") -> None:
    """Record a TorchScript file this install has just written (its sha256). One line appended in one write, so
    processes writing at once do not mix their lines. A folder that cannot be written is not an error: the file
    then runs only with ``--trust-code`` (logged)."""
    if not _DIGEST.match(digest):
        raise ValueError(f"expected a sha256 hex digest, got {digest!r}")
    if digest in trusted_digests():
        return
    folder = config_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        line = f"{digest} {str(written_as).replace(chr(10), ' ')}\n".encode()
        fd = os.open(folder / TRUST_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        import logging

        logging.getLogger("n2n.streamer").warning(
            "could not record %s as written by this install (%s): it will run only with --trust-code",
            written_as or digest, exc)


def refusal(what: str) -> str:
    """The one line that refuses ``what`` (a TorchScript file) without ``--trust-code``."""
    return (f"{what}: not run: a TorchScript file is a program (it can read and write your files), and this one was "
            "not written by this install (n2n train / n2n export); pass --trust-code to run it as code, only if "
            "you trust its source (ONNX weights are served without it)")
