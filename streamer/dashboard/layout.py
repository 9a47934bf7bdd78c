"""How the dashboard fits any width without cutting a figure: :class:`Flow` lays fields out left to right onto as many
lines as the width needs, and :class:`Fitted` drops the blank spacer lines when the terminal is too short."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.text import Text

__all__ = ["SPACER", "Fitted", "Flow", "field"]


def field(label: str, value: str, style: str = "bold") -> Text:
    """``label value``, the label dim: one field, kept whole on a line."""
    text = Text()
    if label:
        text.append(f"{label} ", style="dim")
    text.append(value, style=style)
    return text


class Flow:
    """``fields`` ``gap`` apart, left to right, starting a new line (indented by ``indent``) where the next field
    would not fit: a field is never cut, and only one wider than the whole width is wrapped (at its spaces)."""

    def __init__(self, fields: Iterable[Text | str], gap: str = "   ", indent: int = 0) -> None:
        self.fields = [f if isinstance(f, Text) else Text(f) for f in fields]
        self.gap = gap
        self.indent = indent

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widths = [f.cell_len for f in self.fields] or [0]
        one_line = sum(widths) + len(self.gap) * (len(widths) - 1)
        return Measurement(min(max(widths) + self.indent, one_line), one_line).with_maximum(options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        lines: list[Text] = []
        line: Text | None = None
        for f in self.fields:
            if line is not None and line.cell_len + len(self.gap) + f.cell_len <= width:
                line.append(self.gap)
                line.append_text(f)
                continue
            if line is not None:
                lines.append(line)
            line = Text(" " * self.indent) if line is not None else Text()
            line.append_text(f)
        if line is not None:
            lines.append(line)
        yield Text("\n", no_wrap=False, overflow="fold").join(lines) if lines else Text("")


SPACER = Text("")
"""A blank line :class:`Fitted` may leave out."""


class Fitted:
    """``parts`` one below the other; where they are taller than ``height`` lines (default: the terminal's, less
    ``chrome`` for what is drawn around them), the :data:`SPACER` lines are left out first, then ``elastic`` (free
    text, e.g. a long note) loses its last lines, down to one, ending in "…": the figures always stay whole."""

    def __init__(self, parts: Sequence[RenderableType], chrome: int = 2, height: int | None = None,
                 elastic: Text | None = None) -> None:
        self.parts = list(parts)
        self.chrome = chrome
        self.height = height
        self.elastic = elastic

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        options = options.update(height=None)
        excess = sum(len(console.render_lines(p, options, pad=False)) for p in self.parts) - (
            (self.height or options.size.height) - self.chrome)
        parts = self.parts
        if excess > 0:
            parts = [p for p in parts if p is not SPACER]
            excess -= len(self.parts) - len(parts)
        if excess > 0 and self.elastic is not None and any(p is self.elastic for p in parts):
            lines = self.elastic.wrap(console, options.max_width)
            keep = max(1, len(lines) - excess)
            if keep < len(lines):
                last = lines[keep - 1]
                last.truncate(options.max_width - 1)
                last.rstrip()
                last.append("…")
                short = Text("\n").join(lines[:keep])
                parts = [short if p is self.elastic else p for p in parts]
        yield from parts

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, Group(*self.parts))
