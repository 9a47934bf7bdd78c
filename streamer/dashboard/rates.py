"""The dashboard's frame rates: the frames a server delivered over the time it was delivering them, from the
counters of its successive stats messages (``frames_in``, ``frames_out``).

The server's own ``fps_in``/``fps_out`` count the frames of its last 2 s and divide by 2 s (or by its age while
younger), so a stream shorter than that, or one that starts after the server's warm-up or has ended, is averaged
with the idle time around it: a 100 frames/s lossless run of 30 frames read as 22-40 frames/s. :class:`FrameRate`
measures instead over the last :data:`WINDOW_S` seconds of the counters, leaving out the idle time before the
stream started and after it stopped, and the one stats interval at each end that held some of each (a start or a stop
falls somewhere inside it). Idle gaps of a slow stream (fewer frames than stats messages) stay in: only a gap
long enough to have held :data:`STOP_FRAMES` frames at the stream's rate is a stop.

A time-lapse (at most one frame per stats interval: 0.1-1 frames/s is how live cells are often imaged) is measured
otherwise: from the times its counter went up over the last :data:`LOOKBACK_S` seconds, the frames after the first
over the time from the first to the last (each known to within a stats interval), so 0.2 frames/s reads 0.2.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

__all__ = ["LOOKBACK_S", "STOP_FRAMES", "WINDOW_S", "FrameRate", "RateReading"]

WINDOW_S = 5.0
"""The rates are over the counters of this many seconds (the last stream in them, without idle time)."""
LOOKBACK_S = 120.0
"""A time-lapse's rate is over the counter's rises of this many seconds."""
STOP_FRAMES = 3.0
"""An idle stretch that would have held this many frames at the stream's rate means the stream stopped there."""


@dataclass(frozen=True)
class RateReading:
    """A frame rate as the dashboard shows it."""

    fps: float
    """Frames per second while frames flowed (0 when none flowed in the window)."""
    lower_bound: bool = False
    """The stream lasted under two stats intervals: its start and stop are both inside them, so it ran at least
    this fast (the exact figure needs more stats messages: a longer run or a shorter ``stats_interval_s``)."""
    idle_s: float | None = None
    """Seconds since the stream stopped (None: frames still flow); ``fps`` is then the rate it had."""
    single: bool = False
    """One frame so far in a time-lapse: no rate yet (it needs a second)."""


@dataclass(frozen=True)
class _Interval:
    t0: float
    t1: float
    frames: float
    after_idle: bool
    """Nothing flowed just before it (an idle interval, or the meter's first): a start may be inside it."""


class FrameRate:
    """Frames per second from one counter read at known times (:meth:`add`), as :meth:`reading` says."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._intervals: deque[_Interval] = deque()
        self._last: tuple[float, float] | None = None
        self._rises: deque[tuple[float, float]] = deque()
        """(time, count) of the messages whose count went up, over :data:`LOOKBACK_S`: a time-lapse's frames."""

    def add(self, t: float, count: float | None) -> None:
        """The counter read ``count`` at ``t`` seconds (one clock for all calls). A counter or a clock that goes
        back (a new server) starts over; a missing count is skipped."""
        if count is None:
            return
        if self._last is not None and (t <= self._last[0] or count < self._last[1]):
            if t == self._last[0] and count == self._last[1]:
                return  # the same message again
            self._intervals.clear()
            self._rises.clear()
            self._last = None
        if self._last is not None and count > self._last[1]:
            if not self._rises:
                self._rises.append(self._last)  # the count before the first rise
            self._rises.append((t, count))
        if self._last is not None:
            previous = self._intervals[-1] if self._intervals else None
            after_idle = previous is None or previous.frames <= 0 or previous.t1 != self._last[0]
            self._intervals.append(_Interval(self._last[0], t, count - self._last[1], after_idle))
        self._last = (t, count)
        while self._intervals and self._intervals[0].t1 < t - self.window_s:
            self._intervals.popleft()
        while len(self._rises) > 2 and self._rises[1][0] < t - LOOKBACK_S:
            self._rises.popleft()

    def reading(self) -> RateReading | None:
        """The rate of the last stream in the window; None before two counts."""
        iv = list(self._intervals)
        if not iv:
            return None
        rises = list(self._rises)
        if len(rises) > 1 and all(b[1] - a[1] <= 1 for a, b in itertools.pairwise(rises)):
            return self._time_lapse(iv[-1].t1)  # one frame per rise: a time-lapse
        busy = [i for i, x in enumerate(iv) if x.frames > 0]
        if not busy:
            return RateReading(0.0, idle_s=iv[-1].t1 - iv[0].t0)
        now = iv[-1].t1
        last = busy[-1]
        rough = sum(x.frames for x in iv) / max(now - iv[busy[0]].t0, 1e-9)  # idle tail included: a low estimate

        def stopped(idle_s: float) -> bool:
            return rough * idle_s >= STOP_FRAMES

        start, gap = last, 0.0  # the last stream: back from its last busy interval to a gap that is a stop
        for i in range(last - 1, -1, -1):
            if iv[i].frames > 0:
                if stopped(gap):
                    break
                start, gap = i, 0.0
            else:
                gap += iv[i].t1 - iv[i].t0
        idle_s = now - iv[last].t1
        ended = stopped(idle_s)
        t_a = iv[start].t1 if iv[start].after_idle else iv[start].t0  # a start inside: from its end on
        t_b = iv[last].t0 if ended else now  # a stop inside the last busy interval: up to its start
        if not ended and last == len(iv) - 1:  # frames still came in the latest interval: all of it, or did
            if t_a < iv[last].t0:              # the stream stop inside it? Fewer frames than before says so
                before = _frames(iv, t_a, iv[last].t0) / (iv[last].t0 - t_a)
                expected = before * (iv[last].t1 - iv[last].t0)
                if iv[last].frames < expected - max(STOP_FRAMES, 0.1 * expected):
                    t_b = iv[last].t0  # (a stream that slowed down shows it from the next message on)
            else:
                t_b = t_a  # nothing before it to tell
        frames = _frames(iv, t_a, t_b)
        if frames > 0 and t_b > t_a:
            fps, bound = frames / (t_b - t_a), False
        else:  # only intervals a start or a stop may be inside: the stream ran at least as fast as in each
            fps, bound = max(x.frames / (x.t1 - x.t0) for x in iv[start:last + 1] if x.frames > 0), True
        return RateReading(fps, lower_bound=bound, idle_s=idle_s if ended else None)

    def _time_lapse(self, now: float) -> RateReading:
        """At most one frame per stats interval: frames after the first over the time from the first to the last
        rise, over the last stream of the lookback (a gap of :data:`STOP_FRAMES` times the usual one is a stop)."""
        rises = list(self._rises)[1:]  # (the first entry is the count before the first rise)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(rises)]
        if not gaps:
            return RateReading(0.0, idle_s=None, single=True)
        usual = sorted(gaps)[len(gaps) // 2]
        start = len(rises) - 1
        while start > 0 and gaps[start - 1] <= STOP_FRAMES * usual:
            start -= 1
        first, last = rises[start], rises[-1]
        if last[0] <= first[0]:
            return RateReading(0.0, idle_s=None, single=True)
        fps = (last[1] - first[1]) / (last[0] - first[0])
        idle = now - last[0]
        return RateReading(fps, idle_s=idle if idle > STOP_FRAMES * usual else None)

    def current(self) -> float | None:
        """Frames per second now: the stream's rate, 0 once it stopped; None before two counts."""
        r = self.reading()
        return None if r is None else 0.0 if r.idle_s is not None else r.fps


def _frames(intervals: list[_Interval], t_a: float, t_b: float) -> float:
    """Frames counted in the intervals between ``t_a`` and ``t_b``."""
    return sum(x.frames for x in intervals if x.t0 >= t_a and x.t1 <= t_b)
