"""The dashboard's picture of one stats message: number formatting, the last minute's sparklines (:class:`History`)
and :func:`render`, a pure function of the message (tests render it to a recording console)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..server.stats import ServerStats
from .layout import SPACER, Fitted, Flow, field
from .rates import WINDOW_S, FrameRate, RateReading

__all__ = ["SPARK_CHARS", "STALE_AFTER_S", "History", "render", "source_label", "sparkline"]

SPARK_CHARS = "▁▂▃▄▅▆▇█"
#: Stats older than this are shown with a "no stats for N s" warning (the server publishes
#: every 0.5 s by default, so this is several missed messages).
STALE_AFTER_S = 2.0
#: Cells of the last-minute sparklines (80 columns leave room for a label and the range).
SPARK_WIDTH = 44
STAGES = ServerStats.STAGES
DASH = "–"
_LABEL_WIDTH = 11


# --- number formatting --------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (null, missing, a string, NaN, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    """``12.3 ms``; ``–`` for a missing value."""
    v = _number(value)
    if v is None:
        return DASH
    return f"{v:.{digits}f}" + (f" {unit}" if unit else "")


def _count(value: Any) -> str:
    v = _number(value)
    return DASH if v is None else str(int(v))


def _uptime(value: Any) -> str:
    v = _number(value)
    if v is None or v < 0:
        return DASH
    s = int(v)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _get(stats: Mapping[str, Any], key: str, sub: str) -> Any:
    inner = stats.get(key)
    return inner.get(sub) if isinstance(inner, Mapping) else None


# --- sparkline and history ---------------------------------------------------------------------------
def sparkline(values: Sequence[float | None], width: int) -> str:
    """``values`` as ``width`` block characters, lowest ``▁`` to highest ``█`` (None: a space).

    Longer series are averaged into ``width`` buckets, shorter ones stretched; a constant
    series is drawn as ``▁``.
    """
    if width <= 0:
        return ""
    n = len(values)
    if n == 0:
        return " " * width
    cells: list[float | None] = []
    for i in range(width):
        lo, hi = i * n // width, (i + 1) * n // width
        bucket = [_number(v) for v in values[lo:max(hi, lo + 1)]]
        known = [v for v in bucket if v is not None]
        cells.append(sum(known) / len(known) if known else None)
    known = [v for v in cells if v is not None]
    if not known:
        return " " * width
    low, high = min(known), max(known)
    span = high - low
    top = len(SPARK_CHARS) - 1
    out = []
    for v in cells:
        if v is None:
            out.append(" ")
        elif span <= 0:
            out.append(SPARK_CHARS[0])
        else:
            out.append(SPARK_CHARS[min(top, max(0, round((v - low) / span * top)))])
    return "".join(out)


class History:
    """The last ``window_s`` seconds of (time, latency p50 in ms, output frame rate), and the frame rates the
    dashboard shows: the frames delivered over the time they were delivered (:class:`FrameRate`, from the
    messages' counters and ``uptime_s``; the server's own ``fps_in``/``fps_out`` average over idle time too)."""

    FIELDS = ("latency_p50", "fps_out")

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float | None, float | None]] = deque()
        self.rate_in = FrameRate()
        """Frames received per second (``frames_in``)."""
        self.rate_out = FrameRate()
        """Frames served per second (``frames_out``)."""

    def add(self, stats: Mapping[str, Any], now: float) -> None:
        """Record one stats message received at ``now`` (monotonic seconds)."""
        uptime = _number(stats.get("uptime_s"))  # when the server counted: no transport delay in the rates
        at = now if uptime is None else uptime
        self.rate_in.add(at, _number(stats.get("frames_in")))
        self.rate_out.add(at, _number(stats.get("frames_out")))
        self._samples.append((now, _number(_get(stats, "latency_ms", "p50")), self.rate_out.current()))
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def times(self) -> list[float]:
        return [s[0] for s in self._samples]

    @property
    def latency_p50(self) -> list[float | None]:
        return [s[1] for s in self._samples]

    @property
    def fps_out(self) -> list[float | None]:
        """Frames served per second as the dashboard measured them (0 while none flowed)."""
        return [s[2] for s in self._samples]

    def series(self, name: str, width: int, now: float | None = None) -> list[float | None]:
        """``name`` (``latency_p50`` or ``fps_out``) over the window ending at ``now`` (default:
        the latest sample) in ``width`` equal time bins: the mean of each, None where empty."""
        if name not in self.FIELDS:
            raise ValueError(f"unknown series {name!r}; expected one of {', '.join(self.FIELDS)}")
        if width <= 0 or not self._samples:
            return [None] * max(width, 0)
        col = 1 + self.FIELDS.index(name)
        end = self._samples[-1][0] if now is None else now
        start = end - self.window_s
        sums = [0.0] * width
        counts = [0] * width
        for sample in self._samples:
            t, v = sample[0], sample[col]
            if v is None or t < start or t > end:
                continue
            i = min(width - 1, max(0, int((t - start) / self.window_s * width)))
            sums[i] += v
            counts[i] += 1
        return [s / c if c else None for s, c in zip(sums, counts)]

    def range(self, name: str) -> tuple[float, float] | None:
        """(min, max) of ``name`` over the window, None without values."""
        values = [v for v in getattr(self, name) if v is not None]
        return (min(values), max(values)) if values else None


# --- the panel -------------------------------------------------------------------------------------------
def source_label(source: Any) -> str | None:
    """The camera a bridge reads, as the dashboard's header names it: n2n-live's simulated camera (a source with
    ``simulated`` set, e.g. :class:`~streamer.sources.MicroManagerSource`) is always said to be one; None for a
    source without a ``camera`` name."""
    camera = getattr(source, "camera", None)
    name = f" {camera!r}" if camera else ""
    if getattr(source, "simulated", False):
        return f"SIMULATED camera{name}: synthetic cells, not a microscope"
    return f"camera{name}" if name else None


def _waiting(address: str, seconds: float | None) -> Panel:
    line = Text(f"waiting for server at {address}", style="bold yellow", overflow="fold")
    if seconds is not None:
        line.append(f" … {seconds:.0f} s", style="yellow")
    body = Group(
        line,
        Text(""),
        Text("start one with `n2n serve --model RUN_DIR`", style="dim", overflow="fold"),
        Text("Ctrl-C quits", style="dim"),
    )
    return Panel(body, title=f"n2n dash · {address}", title_align="left", box=box.ROUNDED, padding=(0, 1),
                 border_style="yellow")


def _pairs(*items: tuple[str, str], gap: str = "   ") -> Flow:
    return Flow((field(label, value) for label, value in items), gap=gap)


def _rate(reading: RateReading | None) -> str:
    """``29.9 fps``; ``≥60.0 fps`` for a stream under two stats intervals; ``idle (was 100.0 fps)`` once it
    stopped; ``idle`` when nothing flowed in the window; ``–`` before the second stats message."""
    if reading is None:
        return DASH
    if reading.single:
        return "1 frame so far"
    if reading.fps <= 0:
        return "idle"
    fps = f"{'≥' if reading.lower_bound else ''}{reading.fps:.1f} fps"
    return fps if reading.idle_s is None else f"idle (was {fps})"


def _spark_row(history: History, name: str, unit: str) -> Flow:
    fields = [Text(sparkline(history.series(name, SPARK_WIDTH), SPARK_WIDTH), style="cyan")]
    span = history.range(name)
    if span is not None:
        fields.append(Text(f"{_fmt(span[0])}–{_fmt(span[1], unit)}", style="dim"))
    return Flow(fields, gap="  ")


def _stage_table(stages: Any) -> Table:
    stages = stages if isinstance(stages, Mapping) else {}
    table = Table(box=None, show_header=True, header_style="dim", padding=(0, 1), pad_edge=False,
                  show_edge=False, expand=False)
    for name in STAGES:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_row(*(_fmt(stages.get(name)) for name in STAGES))
    return table


def _errors(stats: Mapping[str, Any]) -> Flow:
    total = _number(stats.get("errors"))
    kinds = stats.get("errors_by_kind")
    kinds = {str(k): n for k, v in kinds.items() if (n := _number(v))} if isinstance(kinds, Mapping) else {}
    fields = [Text(_count(total), style="bold red" if total else "bold")]
    ranked = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    if ranked:
        shown = ", ".join(f"{k} {int(n)}" for k, n in ranked[:3])
        more = f", +{len(ranked) - 3} more kinds" if len(ranked) > 3 else ""
        fields.append(Text(f"({shown}{more})", style="red"))
    return Flow(fields)


def _drops(stats: Mapping[str, Any]) -> Flow:
    drops = _number(stats.get("drops"))
    fraction = _number(stats.get("drop_fraction"))
    text = Text(f"{_count(drops)} ({_fmt(None if fraction is None else fraction * 100, '%')})",
                style="bold yellow" if drops else "bold")
    reasons = stats.get("drops_by_reason")
    if isinstance(reasons, Mapping) and reasons:  # where frames were lost: input, slow_subscriber, no_subscriber...
        text.append(": " + ", ".join(f"{k} {_count(v)}" for k, v in sorted(reasons.items())))
    return Flow([text, *(field(label, _count(stats.get(key))) for label, key in
                         (("queue depth", "queue_depth"), ("subscribers", "subscribers"), ("viewers", "viewers")))])


FLAG_LABELS = {"float_path": "float path", "raw:output_range": "raw (output check)", "raw:no_model": "raw (no model)"}
"""How the checks row names the Denoiser's flags (others: ``raw:x`` as ``raw (x)``, the rest as sent)."""


def _flag_label(flag: str) -> str:
    if flag in FLAG_LABELS:
        return FLAG_LABELS[flag]
    return f"raw ({flag[4:].replace('_', ' ')})" if flag.startswith("raw:") else flag.replace("_", " ")


def _checks(stats: Mapping[str, Any]) -> Flow:
    """Frames served with a flag from the Denoiser's checks, e.g. ``float path 3 · raw (output check) 1``: the
    float32 fallback of a reduced-precision model, and frames served RAW because the denoised output failed a
    check (``served_flags``; ``–`` from a server that does not count them)."""
    flags = stats.get("served_flags")
    if not isinstance(flags, Mapping):
        return Flow([DASH])
    counts = {str(k): int(n) for k, v in flags.items() if (n := _number(v))}
    counts.setdefault("float_path", 0)
    if not any(k.startswith("raw:") for k in counts):
        counts["raw"] = 0
    ranked = sorted(counts.items(), key=lambda kv: (kv[0].startswith("raw"), -kv[1], kv[0]))
    fields: list[Text | str] = [field(_flag_label(flag), str(n),
                                      "bold" if not n else "bold red" if flag.startswith("raw") else "bold yellow")
                                for flag, n in ranked]
    no_model = stats.get("no_model")  # a model set: frames of channels it has no model for, by channel
    if isinstance(no_model, Mapping) and no_model:
        by_channel = sorted(((str(k), int(n)) for k, v in no_model.items() if (n := _number(v))),
                            key=lambda kv: (-kv[1], kv[0]))
        if by_channel:
            shown = ", ".join(f"{k[:20]} {n}" for k, n in by_channel[:3])
            more = f", +{len(by_channel) - 3} more" if len(by_channel) > 3 else ""
            fields.append(Text(f"(no model: {shown}{more})", style="red"))
    return Flow(fields, gap=" · ")


def _model(stats: Mapping[str, Any]) -> str:
    """The model served, or a model set's models by channel (``DAPI dapi, GFP gfp, other –``)."""
    models = stats.get("models")
    if not isinstance(models, Mapping) or not models or list(models) == ["*"]:  # one model for every channel
        return str(stats.get("model", DASH))
    named = [f"{'other' if c == '*' else str(c)[:20]} {str(m.get('model', DASH))[:24]}"
             for c, m in list(models.items())[:4] if isinstance(m, Mapping)]
    more = f", +{len(models) - 4} more" if len(models) > 4 else ""
    return ", ".join(named) + more + ("" if "*" in models else ", other raw")


def _load(cpu_percent: float | None, cpu_note: str | None, gpu: str | None) -> Flow:
    """``CPU 23 %`` (and the GPUs); without a figure, why not in words."""
    cpu = _number(cpu_percent)
    fields = [field("CPU", f"{cpu:.0f} %") if cpu is not None
              else field("CPU", cpu_note or "not measured yet", style="yellow")]
    if gpu:
        fields.append(Text(gpu, style="bold"))
    return Flow(fields)


def render(stats: Mapping[str, Any] | None, history: History, address: str, *,
           seconds_since_last: float | None = None, cpu_percent: float | None = None, cpu_note: str | None = None,
           gpu: str | None = None, bad_messages: int = 0, camera: str | None = None) -> RenderableType:
    """The dashboard for one stats message (None: nothing received yet). It fits 80 × 24: no figure is cut at any
    width (a row that does not fit wraps between its fields); when rows run short the blank lines go first, then
    the end of the precision note (the server's log has it whole).

    ``history``: the messages so far (the frame rates and the sparklines come from it).
    ``seconds_since_last``: age of ``stats`` (or time waited when None); older than
    :data:`STALE_AFTER_S` adds a "no stats for N s" warning. ``cpu_percent`` and ``gpu``:
    this machine's load (see :class:`CpuMeter`, :class:`GpuMeter`), ``cpu_note``: why there is no CPU figure;
    ``bad_messages``: undecodable messages ignored so far; ``camera``: the bridge's source
    (:func:`source_label`), when the dashboard knows it.
    """
    if stats is None:
        return _waiting(address, seconds_since_last)
    stale = seconds_since_last is not None and seconds_since_last > STALE_AFTER_S

    header = Flow([Text(_model(stats), style="bold"),
                   Text(f"{stats.get('engine', DASH)} {stats.get('precision', DASH)} on {stats.get('device', DASH)}",
                        style="bold cyan"),
                   Text(f"{stats.get('mode', DASH)} mode"), Text(f"up {_uptime(stats.get('uptime_s'))}")],
                  gap="  ·  ")
    lines: list[RenderableType] = [header]
    if camera:
        simulated = camera.startswith("SIMULATED")
        lines.append(Text(camera, style="bold reverse yellow" if simulated else "bold", overflow="fold"))
    note = Text(str(stats.get("precision_note") or ""), style="dim", overflow="fold")
    if note:
        lines.append(note)
    if stale:
        lines.append(Text(f"no stats for {seconds_since_last:.0f} s: is the server still running? "
                          "(showing the last figures)", style="bold reverse red", overflow="fold"))

    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=_LABEL_WIDTH, no_wrap=True, style="dim")
    grid.add_column()
    rate_in, rate_out = history.rate_in.reading(), history.rate_out.reading()
    if rate_in is None and rate_out is None:
        grid.add_row("frame rate", Text("measuring (from the second stats message on)", style="dim"))
    else:
        grid.add_row("frame rate", Flow([field("in", _rate(rate_in)), field("out", _rate(rate_out)),
                                         Text(f"(last {WINDOW_S:g} s, idle time left out)", style="dim")]))
    for label, key in (("latency", "latency_ms"), ("in server", "server_ms")):
        grid.add_row(label, _pairs(*((q, _fmt(_get(stats, key, q), "ms")) for q in ("p50", "p95", "p99"))))
    grid.add_row("p50, 1 min", _spark_row(history, "latency_p50", "ms"))
    grid.add_row("fps, 1 min", _spark_row(history, "fps_out", "fps"))
    grid.add_row("stages ms", _stage_table(stats.get("stages_ms")))
    grid.add_row("frames", _pairs(("in", _count(stats.get("frames_in"))), ("out", _count(stats.get("frames_out"))),
                                  ("requests", _count(stats.get("requests"))), ("swaps", _count(stats.get("swaps")))))
    grid.add_row("drops", _drops(stats))
    grid.add_row("errors", _errors(stats))
    grid.add_row("checks", _checks(stats))
    ft = stats.get("finetune")
    if isinstance(ft, dict):  # n2n serve --finetune: the worker's progress
        grid.add_row("fine-tune", _pairs(("state", str(ft.get("state", "?"))[:40]), ("pairs", _count(ft.get("pairs"))),
                                         ("steps", _count(ft.get("steps"))),
                                         ("val serving", _fmt(ft.get("val_serving"), "", 4)),
                                         ("candidate", _fmt(ft.get("val_candidate"), "", 4)),
                                         ("swaps", _count(ft.get("swaps")))))
    grid.add_row("load", _load(cpu_percent, cpu_note, gpu))
    lines += [SPACER, grid]

    footer = [f"updated {seconds_since_last:.1f} s ago"] if seconds_since_last is not None else []
    if bad_messages:
        footer.append(f"{bad_messages} bad messages ignored")
    footer.append("Ctrl-C quits")
    lines += [SPACER, Flow(Text(f, style="yellow" if "bad" in f else "dim") for f in footer)]
    return Panel(Fitted(lines, elastic=note), title=f"n2n dash · {address}", title_align="left", box=box.ROUNDED,
                 padding=(0, 1), border_style="red" if stale else "cyan")
