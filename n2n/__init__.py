"""n2n-live: the ``n2n`` command (its subcommands drive ``trainer``, ``streamer`` and ``bench``)."""

__all__ = ["__version__"]
__version__ = "0.1.0"
