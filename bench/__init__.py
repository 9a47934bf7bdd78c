"""Measurements of the product driven from outside, as a user would.

The commands (``python -m bench.NAME``):

* ``suite`` (``n2n bench``): every engine side by side, bare and end to end, the transport floor, live overload;
* ``frontier`` (``n2n frontier``): quality against speed for several models and precisions;
* ``latency``: the bare engine against end to end through ``n2n serve``;
* ``denoise``: ``n2n denoise`` on a recorded dataset, planes/s and memory per worker, 1 and N workers;
* ``micromanager``: grab and bridge rates on the in-process core;
* ``drift``: K-frame models under sample drift (the motion check);
* ``faults``: fuzzed input, stalled subscribers, a killed server, frames of growing size;
* ``viewer``: napari and stalled viewers against the server's rate;
* ``swap``: output gaps around model swaps;
* ``finetune``: fine-tuning on the live stream against training from scratch;
* ``echo``: the ZeroMQ transport floor (a process the suite starts).

What they are made of: ``processes`` (the one place that starts ``n2n serve`` and ``bench.echo``), ``transport``
(echo round trip, memcpy), ``overload`` (live mode fed too fast), ``flops`` (FLOPs from the ONNX graph), ``report``
(the suite's table, plots and report folder; JSON-safe values, the machine), ``command`` (what every command's
``main`` shares), ``config`` (``n2n bench`` and ``n2n frontier``'s configurations).
"""

__all__: list[str] = []
