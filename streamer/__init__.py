"""Model → live: the model card, frame sources, wire protocol, engines, the ZeroMQ server and client, the
Micro-Manager bridge and hook, the dashboard.

Never imports ``trainer``: it runs exported artifacts described by their model card.
"""

__all__: list[str] = []
