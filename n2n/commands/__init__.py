"""The ``n2n`` subcommands, one module per area; ``n2n/cli.py`` registers them in this order."""

from n2n.commands.micromanager import ACQUIRE, BRIDGE, GRAB
from n2n.commands.offline import DENOISE
from n2n.commands.serving import DASH, KEYS, SERVE
from n2n.commands.tools import BENCH, DEMO, FRONTIER
from n2n.commands.training import AVERAGE, EVALUATE, EXPORT, SIMULATE, TRAIN
from n2n.commands.viewer import VIEW

__all__ = ["ALL"]

ALL = (SIMULATE, TRAIN, EXPORT, EVALUATE, AVERAGE, DENOISE, SERVE, GRAB, BRIDGE, ACQUIRE, DEMO, VIEW, BENCH,
       FRONTIER, DASH, KEYS)
"""Every subcommand, in the order ``n2n --help`` lists them."""
