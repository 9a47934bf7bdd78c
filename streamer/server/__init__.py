"""The ZeroMQ denoising server (``n2n serve``), as parts around one poll loop (see :mod:`.server`), with its
configuration and a runner for a server in a thread of this process."""

from .config import CONTROL_COMMANDS, ControlCommand, FinetuneConfig, ServeConfig
from .runner import ServerThread, running_server
from .server import Server
from .swap import load_denoiser

__all__ = ["CONTROL_COMMANDS", "ControlCommand", "FinetuneConfig", "ServeConfig", "Server", "ServerThread",
           "load_denoiser", "running_server"]
