"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamer.config import ServeConfig
from streamer.server import running_server

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- test: marker -->`` in the README."""
    text = README.read_text()
    found = re.search(rf"<!-- test: {re.escape(marker)} -->\s*```\w*\n(.*?)```", text, re.S)
    if found is None:
        pytest.fail(f"README.md has no block marked <!-- test: {marker} -->")
    return found.group(1)


def test_client_example_runs_verbatim(trained_run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The StreamClient example, copied from the README unchanged, against a server on the default addresses:
    the request and the pushed frame both come back (the frame's own result, with its meta)."""
    code = readme_block("client-example")
    with running_server(trained_run["run"], ServeConfig(num_threads=1, stats_interval_s=0.1)):
        exec(compile(code, "README.md (client example)", "exec"), {"__name__": "readme"})

    printed = capsys.readouterr().out.split()
    assert printed[0] == "uint16" and printed[1] == "1"  # the dtype; the pushed frame (seq 1, after the request)
    assert "{'stage_x':" in " ".join(printed) and "p50" in " ".join(printed)
