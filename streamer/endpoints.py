"""The server's six ZeroMQ addresses, as the server binds them and clients connect to them."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator, model_validator

from .core.config import Strict

__all__ = ["ENDPOINT_NAMES", "Endpoints"]

_SCHEMES = ("tcp://", "ipc://", "inproc://")
ENDPOINT_NAMES = ("input", "output", "request", "stats", "control", "view")
"""The server's six sockets, in the order of :class:`Endpoints`."""


class Endpoints(Strict):
    """ZeroMQ addresses the server binds (clients connect to the same strings).

    ``tcp://127.0.0.1:*`` binds a free port (the server reports the one it got);
    ``ipc:///tmp/n2n-input`` is fastest for large frames on one host.
    """

    input: str = "tcp://127.0.0.1:5555"
    """PULL: producers push frames here."""
    output: str = "tcp://127.0.0.1:5556"
    """XPUB: denoised frames (topic ``frame``), copies of request results (``reply``) and errors (``error``)
    for any number of subscribers (the server counts them)."""
    request: str = "tcp://127.0.0.1:5557"
    """ROUTER: a synchronous caller (REQ) sends a frame and gets its denoised frame back."""
    stats: str = "tcp://127.0.0.1:5558"
    """PUB: statistics as JSON (topic ``stats``), twice a second."""
    control: str = "tcp://127.0.0.1:5559"
    """REP: status, model swap, shutdown (JSON commands)."""
    view: str = "tcp://127.0.0.1:5560"
    """XPUB: for viewers (``n2n view``, the napari widget), each frame's raw and denoised pixels in one message
    (topic ``view``), sent only while a viewer is subscribed; lossy: a viewer that falls behind misses frames,
    never slows the server (at most 2 messages queue for it)."""

    @classmethod
    def local(cls, transport: str = "tcp", folder: str | Path | None = None) -> Endpoints:
        """Every socket on this machine only, on ports the system picks (``tcp://127.0.0.1:*``), or as
        ``ipc://FOLDER/NAME`` files (``transport='ipc'``: the fastest path between processes of one host)."""
        if transport == "ipc":
            if folder is None:
                raise ValueError("ipc endpoints need a folder for their socket files")
            return cls(**{name: f"ipc://{folder}/{name}" for name in ENDPOINT_NAMES})
        if transport != "tcp":
            raise ValueError(f"expected transport tcp or ipc, got {transport!r}")
        return cls(**{name: "tcp://127.0.0.1:*" for name in ENDPOINT_NAMES})

    @field_validator(*ENDPOINT_NAMES)
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(_SCHEMES):
            raise ValueError(f"expected an address starting with one of {', '.join(_SCHEMES)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> Endpoints:
        addrs = [a for a in self.model_dump().values() if not a.endswith(":*")]
        dup = {a for a in addrs if addrs.count(a) > 1}
        if dup:
            raise ValueError(f"each socket needs its own address; used twice: {', '.join(sorted(dup))}")
        return self


