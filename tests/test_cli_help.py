"""`n2n --version`, every option's default in `--help`, and renamed flags (one word, one meaning) whose old
spellings still work for a release, with a warning."""

from __future__ import annotations

import functools
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from bench.config import BenchConfig
from n2n.cli import app, expand_multi_value
from n2n.commands import ALL
from streamer.endpoints import Endpoints
from streamer.server import ServeConfig
from trainer.config import SimulateConfig

COMMANDS = [c.func.__name__ for c in ALL if c.func is not None]


def n2n(*args: str | Path) -> Result:
    return CliRunner().invoke(app, expand_multi_value([str(a) for a in args]), env={"COLUMNS": "300"})


def help_rows(command: str) -> list[str]:
    result = n2n(command, "--help")
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_version() -> None:
    """`n2n --version` prints the installed n2n-live version."""
    result = n2n("--version")

    assert result.exit_code == 0
    assert result.output.strip() == f"n2n-live {version('n2n-live')}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_shows_its_default(command: str) -> None:
    """Each option that takes a value shows `[default: …]` (or is required); no switch shows `<bool>`."""
    rows = help_rows(command)
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]

    assert not any("<bool>" in row for row in rows)
    for param in params:
        flag = next((o for o in param.opts if o.startswith("--")), None)
        if flag is None or param.required or (param.is_flag and not param.secondary_opts):
            continue  # arguments, required options, and switches (off unless given)
        row = next((r for r in rows if f" {flag} " in r), None)
        assert row is not None and "[default: " in row, f"n2n {command} {flag}: {row}"


@pytest.mark.parametrize(("command", "flag", "value"), [
    ("simulate", "--frames", SimulateConfig().frames),
    ("simulate", "--size", SimulateConfig().camera.height),
    ("serve", "--input-address", Endpoints().input),
    ("serve", "--mode", ServeConfig().mode),
    ("bridge", "--precision", ServeConfig().precision),
    ("bench", "--engine", BenchConfig().engines),
    ("demo", "--quick", "--full"),
])
def test_default_comes_from_the_config_model(command: str, flag: str, value: object) -> None:
    """The default shown is the config model's own value, so the help cannot drift from it."""
    row = next(r for r in help_rows(command) if f" {flag} " in r)

    assert f"[default: {value}]" in row, row


def _dry_run(*args: str) -> tuple[dict, list[str]]:
    result = n2n(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    return yaml.safe_load(result.stdout), warnings


@pytest.mark.parametrize(("args", "old", "new", "key", "value"), [
    (["train", "--out", "r", "--mode", "supervised"], "--mode", "--target", ("mode",), "supervised"),
    (["serve", "--model", "m", "--input", "tcp://127.0.0.1:6000"], "--input", "--input-address",
     ("endpoints", "input"), "tcp://127.0.0.1:6000"),
    (["serve", "--model", "m", "--output=tcp://127.0.0.1:6001"], "--output", "--output-address",
     ("endpoints", "output"), "tcp://127.0.0.1:6001"),
    (["serve", "--model", "m", "--control", "ipc:///tmp/c"], "--control", "--control-address",
     ("endpoints", "control"), "ipc:///tmp/c"),
    (["dash", "--stats", "tcp://127.0.0.1:7000"], "--stats", "--stats-address", ("stats",), "tcp://127.0.0.1:7000"),
    (["bench", "--engines", "onnxruntime,torch"], "--engines", "--engine", ("engines",), "onnxruntime,torch"),
    (["bench", "--precisions", "fp32"], "--precisions", "--precision", ("precisions",), "fp32"),
    (["frontier", "--sizes", "64,128"], "--sizes", "--size", ("sizes",), [64, 128]),
])
def test_old_spelling_still_works_with_a_warning(args: list[str], old: str, new: str, key: tuple[str, ...],
                                                  value: object) -> None:
    """A renamed flag's old spelling sets the same key, with one warning line naming the new one."""
    cfg, warnings = _dry_run(*args)

    assert functools.reduce(lambda d, k: d[k], key, cfg) == value
    assert warnings == [f"warning: {old} is now {new}; the old spelling will be removed in the next release"]


def test_new_spellings_need_no_warning() -> None:
    """The new names set their keys without a warning; --output-dtype is not mistaken for --output."""
    cfg, warnings = _dry_run("serve", "--model", "m", "--output-address", "tcp://127.0.0.1:6001",
                             "--output-dtype", "float32")
    assert warnings == [] and cfg["endpoints"]["output"] == "tcp://127.0.0.1:6001" and cfg["output_dtype"] == "float32"

    cfg, warnings = _dry_run("train", "--out", "r", "--target", "supervised")
    assert warnings == [] and cfg["mode"] == "supervised"

    cfg, warnings = _dry_run("bench", "--engine", "openvino,torch", "--precision", "fp32,bf16")
    assert warnings == [] and cfg["engines"] == "openvino,torch" and cfg["precisions"] == "fp32,bf16"


def test_bridge_takes_the_engine_options_serve_has() -> None:
    """`n2n bridge` takes --precision, --device and --threads like `n2n serve`, for the server it starts."""
    cfg, warnings = _dry_run("bridge", "--model", "m", "--precision", "bf16", "--device", "cpu", "--threads", "2",
                             "--frames", "0", "--no-save", "--gui")

    assert warnings == []
    assert (cfg["serve"]["precision"], cfg["serve"]["device"], cfg["serve"]["num_threads"]) == ("bf16", "cpu", 2)
    assert cfg["bridge"]["frames"] is None and cfg["bridge"]["out"] is None and cfg["source"]["config_file"] is None



def test_the_command_list_breaks_lines_where_the_terminal_ends_not_mid_sentence() -> None:
    """At 80 columns `n2n --help` lists each command's description wrapped by the terminal: every line but a
    description's last reaches near the panel's edge (a docstring's own line breaks, made for the source's width,
    cut sentences in two there; issue 33)."""
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line and line.startswith("╭")) + 1
    descriptions: dict[str, list[str]] = {}
    name = ""
    for line in lines[start:]:
        if line.startswith("╰"):
            break
        body = line.strip("│ ").rstrip()
        first = line[2:].split(" ", 1)[0] if line[2:3] != " " else ""
        if first:
            name, body = first, body[len(first):].strip()
        descriptions.setdefault(name, []).append(body.strip())
    assert set(COMMANDS) <= set(descriptions), descriptions.keys()
    short = {n: d for n, d in descriptions.items() if any(len(line) < 50 for line in d[:-1])}
    assert not short, f"n2n --help breaks a description early: {short}"
