"""Model → live: frame sources (and, in later issues, the ZeroMQ server, engines, dashboard).

Never imports ``trainer``: it runs exported artifacts described by their model card.
"""

__all__: list[str] = []
