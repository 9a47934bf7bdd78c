"""The documentation's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamer.server import ServeConfig, running_server

DOCS = Path(__file__).resolve().parent.parent / "docs"


def docs_block(page: str, marker: str) -> str:
    """The fenced code block right after ``<!-- test: marker -->`` in ``docs/page``."""
    text = (DOCS / page).read_text()
    found = re.search(rf"<!-- test: {re.escape(marker)} -->\s*```\w*\n(.*?)```", text, re.S)
    if found is None:
        pytest.fail(f"docs/{page} has no block marked <!-- test: {marker} -->")
    return found.group(1)


def test_client_example_runs_verbatim(trained_run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The StreamClient example, copied from docs/server.md unchanged, against a server on the default addresses:
    the request and the pushed frame both come back (the frame's own result, with its meta)."""
    code = docs_block("server.md", "client-example")
    with running_server(trained_run["run"], ServeConfig(num_threads=1, stats_interval_s=0.1)):
        exec(compile(code, "docs/server.md (client example)", "exec"), {"__name__": "docs"})

    printed = capsys.readouterr().out.split()
    assert printed[0] == "uint16" and printed[1] == "1"  # the dtype; the pushed frame (seq 1, after the request)
    assert "{'stage_x':" in " ".join(printed) and "p50" in " ".join(printed)
