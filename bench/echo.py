"""A ZeroMQ echo with no model: the transport floor that ``bench.suite`` sets beside the server.

    python -m bench.echo --address tcp://127.0.0.1:* --ready-file echo.json [--idle-s 120]

A REP socket sends every multipart message back as it came (no copy). It writes the bound
address (a ``:*`` port resolved) to ``--ready-file`` as JSON, and stops on SIGTERM/SIGINT,
on an empty one-part message (echoed first), or after ``--idle-s`` seconds without a message
(so a crashed benchmark never leaves it behind).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from bench import command

__all__ = ["serve", "main"]


def serve(address: str, ready_file: Path | None = None, idle_s: float = 120.0) -> int:
    """Echo messages on ``address`` until told to stop; returns the number echoed."""
    stop = False

    def _on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    echoed = 0
    try:
        sock.bind(address)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"address": endpoint}) + "\n")
            tmp.replace(ready_file)
        last = time.monotonic()
        while not stop:
            if not sock.poll(100):
                if time.monotonic() - last > idle_s:
                    break
                continue
            parts = sock.recv_multipart(copy=False)
            sock.send_multipart(parts, copy=False)
            echoed += 1
            last = time.monotonic()
            if len(parts) == 1 and len(parts[0].buffer) == 0:
                break
    finally:
        sock.close(linger=0)
        ctx.term()
    return echoed


def main(argv: list[str] | None = None) -> int:
    p = command.parser("bench.echo", __doc__)
    p.add_argument("--address", default="tcp://127.0.0.1:*", help="ZeroMQ address to bind (REP)")
    p.add_argument("--ready-file", type=Path, default=None, help="write the bound address here (JSON)")
    p.add_argument("--idle-s", type=float, default=120.0, help="stop after this long without a message")
    a = p.parse_args(argv)
    try:
        n = serve(a.address, a.ready_file, a.idle_s)
    except zmq.ZMQError as exc:
        print(f"error: cannot serve on {a.address}: {exc}", file=sys.stderr)
        return 2
    print(f"echoed {n} messages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
