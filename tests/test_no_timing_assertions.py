"""The rule of docs/developing.md, "No timing assertions in tests", checked on the tests themselves: no ``assert``
compares a clock difference (``time.monotonic() - t0 < 5``) or a timed figure (a key or name like ``*_ms``,
``*_s``, ``*fps*``, ``latency``, ``elapsed``) with a number. A busy machine (a shared CI runner, a microscope PC
training a model) is slower, not wrong: speed is measured in ``bench/``; tests wait for events (``waiting.py``).

A floor the code enforces itself (a source that paces by sleeping cannot be faster than its rate) may be asserted,
with ``# timing:`` and the reason on the assert's line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCKS = {"monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "time", "time_ns", "process_time"}
TIMED_KEY = re.compile(r"(^|_)(ms|s|fps|seconds|per_s|latency|elapsed|stall|gap)($|_)")
TIMED_NAME = re.compile(r"^(elapsed|waited|took|duration|seconds|\w+_ms|\w+_s|\w*fps\w*)$")
ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _is_clock(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCKS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "time")


def _clock_difference(node: ast.AST) -> bool:
    return any(isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Sub) and any(_is_clock(x) for x in ast.walk(sub))
               for sub in ast.walk(node))


def _timed(node: ast.AST) -> bool:
    """A timed figure: ``r["bare_ms_p50"]``, ``r["gap_ms_normal"]["p50"]``, ``elapsed``, ``service_ms``."""
    while isinstance(node, ast.Subscript):
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and TIMED_KEY.search(key.value):
            return True
        node = node.value
    return isinstance(node, ast.Name) and TIMED_NAME.match(node.id) is not None


def _number(node: ast.AST) -> bool:
    """A nonzero number, or arithmetic on numbers only (``1.0 + 5 + 3``): a bound in seconds, ms or frames/s."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool) and node.value != 0
    if isinstance(node, ast.BinOp):
        return all(isinstance(x, ast.Constant | ast.BinOp | ast.operator) for x in ast.walk(node)) \
            and any(_number(x) for x in (node.left, node.right))
    return isinstance(node, ast.UnaryOp) and _number(node.operand)


def timing_assertions(source: str) -> list[tuple[int, str]]:
    """``(line, assertion)`` for each assert of ``source`` that times something (see the module docstring)."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert) or "# timing:" in lines[node.lineno - 1]:
            continue
        for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            sides = [cmp.left, *cmp.comparators]
            for op, a, b in zip(cmp.ops, sides, sides[1:]):
                if isinstance(op, ORDER) and (_clock_difference(a) or _clock_difference(b)
                                              or (_timed(a) and _number(b)) or (_timed(b) and _number(a))):
                    found.append((node.lineno, ast.unparse(node.test)))
                    break
    return found


def test_no_test_asserts_a_time_or_a_rate() -> None:
    offenders = [f"{path.name}:{line}: assert {text}" for path in sorted(TESTS.glob("*.py"))
                 for line, text in timing_assertions(path.read_text())]
    assert not offenders, "timing assertions (docs/developing.md, 'No timing assertions in tests'):\n" + "\n".join(
        offenders)


@pytest.mark.parametrize("code", [
    "assert time.monotonic() - t0 < 5",
    "assert not thread.is_alive() and time.monotonic() - t0 < 1.0 + 5 + 3",
    "assert 0 < r['service_ms'] < 20",
    "assert 10 <= r['gap_ms_normal']['p50'] <= 30",
    "assert waited < 1.0",
    "assert status['latency_ms']['p99'] < 100",
])
def test_the_check_finds_timed_assertions(code: str) -> None:
    assert timing_assertions(code) == [(1, code.removeprefix("assert "))]


@pytest.mark.parametrize("code", [
    "assert time.monotonic() < deadline",  # a deadline while waiting for an event
    "assert r['bare_ms_p50'] > 0",  # reported
    "assert 0 < r['bare_ms_p50'] <= r['bare_ms_p99']",  # self-consistent
    "assert r['frames_in'] == 401 and r['camera_fps'] == 50",  # counts, settings
    "assert elapsed >= 0.075  # timing: a floor the source enforces by sleeping",
])
def test_the_check_lets_behaviour_through(code: str) -> None:
    assert timing_assertions(code) == []
