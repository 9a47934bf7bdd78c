"""Measurements of the product driven from outside, as a user would.

The commands (``python -m bench.NAME``): ``suite`` (``n2n bench``: every engine side by side), ``frontier``
(``n2n frontier``: quality against speed), ``latency`` (bare engine vs end to end), ``micromanager`` (grab
and bridge rates), ``echo`` (the ZeroMQ transport floor, a process the suite starts).

What they are made of: ``processes`` (the one place that starts and stops ``n2n serve`` and ``bench.echo``),
``transport`` (echo round trip, memcpy), ``overload`` (live mode fed too fast), ``flops`` (FLOPs from the
ONNX graph), ``report`` (the suite's table, plots and report folder; JSON-safe values, the machine),
``command`` (what every command's ``main`` shares).
"""

__all__: list[str] = []
