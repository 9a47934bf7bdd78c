"""Training by time as well as epochs: the thread count that is fastest now, an honest estimate up front, and a
wall-clock budget (``optim.max_minutes``, ``n2n train --minutes``) that the run holds.

The budget is planned, not cut: after each epoch the epochs that still fit (at the larger of the mean and the last
epoch's time so far) become the learning-rate schedule's horizon, so a run stopped by its budget ends annealed, as a
shorter run would, instead of being cut mid-schedule; no epoch starts that would end past the budget at that pace
(the first epoch always runs). Each epoch stays whole and the checkpoint keeps the epoch time, so ``--resume`` goes
on from the last epoch, planning a new ``--minutes`` from the first resumed epoch.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["Pace", "ThreadProbe", "format_seconds"]

log = logging.getLogger("n2n.trainer")


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ThreadProbe:
    """Times the first steps at each candidate thread count (``steps_each`` steps apiece, the first of each block
    not counted: it pays for the switch) and keeps the fastest. On a busy machine fewer threads are often twice as
    fast (measured: 97 ms a step at 2 threads, 55 ms at 1, beside two busy loops on 2 cores), as every thread of a
    parallel region waits for the slowest. The probe steps are real training steps.

    The load can change after the choice (another training starts beside this one, or ends): the chosen count's
    steps are watched in blocks of ``window``, and where a block's median step is ``change`` times slower or faster
    than when the count was chosen, the counts are timed again from the next step. Measured on 2 cores: a run alone
    chose 2 threads (27 ms a step); with a second training beside it its steps took 50 ms, and timed again it went
    on at 1 thread, 39 ms."""

    def __init__(self, candidates: list[int], steps_each: int = 4, window: int = 50, change: float = 1.5) -> None:
        self.candidates = candidates
        self.steps_each = max(2, steps_each)
        self.window = max(2, window)
        self.change = change
        self.times: dict[int, list[float]] = {c: [] for c in candidates}
        self.chosen: int | None = candidates[0] if len(candidates) == 1 else None
        self.reprobes = 0
        """How often the load changed enough to time the counts again."""
        self._start = 0  # the session step the current probe began at
        self._recent: list[float] = []  # the chosen count's step times since the last check

    @classmethod
    def for_machine(cls, cores: int | None = None) -> ThreadProbe:
        """All cores, half of them, one."""
        n = torch.get_num_threads() if cores is None else cores
        return cls(sorted({n, max(1, n // 2), 1}, reverse=True))

    @property
    def probing(self) -> bool:
        return self.chosen is None

    def before(self, step: int) -> None:
        """Set the thread count for this session's ``step`` (0-based) while probing."""
        at = step - self._start
        if self.chosen is None and at % self.steps_each == 0:
            torch.set_num_threads(self.candidates[at // self.steps_each])

    def after(self, step: int, seconds: float) -> None:
        """Record the step's time; once every candidate ran, choose (and set) the fastest; after that, watch for a
        change of load."""
        if self.chosen is not None:
            self._watch(step, seconds)
            return
        at = step - self._start
        if at % self.steps_each:
            self.times[self.candidates[at // self.steps_each]].append(seconds)
        if at + 1 == self.steps_each * len(self.candidates):
            medians = {c: statistics.median(t) for c, t in self.times.items()}
            self.chosen = min(medians, key=lambda c: medians[c])
            torch.set_num_threads(self.chosen)
            shown = ", ".join(f"{c}: {1000 * m:.0f} ms" for c, m in medians.items())
            log.info("training threads: %d (a step at %s)", self.chosen, shown)

    def _watch(self, step: int, seconds: float) -> None:
        if len(self.candidates) < 2:
            return
        self._recent.append(seconds)
        if len(self._recent) < self.window:
            return
        now, then = statistics.median(self._recent), self.step_seconds()
        self._recent = []
        if then and not then / self.change <= now <= then * self.change:
            log.info("training threads: a step takes %.0f ms now, %.0f ms when %d were chosen (the machine's load "
                     "changed): timing %s threads again", 1000 * now, 1000 * then, self.chosen,
                     ", ".join(map(str, self.candidates)))
            self._start = step + 1
            self.times = {c: [] for c in self.candidates}
            self.chosen = None
            self.reprobes += 1

    def step_seconds(self) -> float | None:
        """The chosen count's median step time, once chosen."""
        if self.chosen is None or not self.times.get(self.chosen):
            return None
        return statistics.median(self.times[self.chosen])


class Pace:
    """The run's clock: this session's elapsed time, the epochs that fit in the budget, what to say up front."""

    def __init__(self, epochs: int, steps_per_epoch: int, max_minutes: float | None, start_epoch: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.budget_s = None if max_minutes is None else max_minutes * 60.0
        self.start_epoch = start_epoch
        self.planned = epochs
        """The epoch the learning-rate schedule ends at: ``epochs``, or fewer where the budget allows fewer."""
        self.t0 = clock()
        self._epoch_seconds: list[float] = []
        self._saved_epoch_s: float | None = None
        self._epoch_t0 = self.t0

    @property
    def elapsed(self) -> float:
        """Seconds since this session started training (a resumed run's budget counts from its resume)."""
        return self.clock() - self.t0

    def resume(self, start_epoch: int, epoch_seconds: float | None) -> None:
        """A resumed run: with a budget and the epoch time the checkpoint recorded, the schedule ends at the epochs
        that fit from the first resumed epoch on (without them, at ``epochs`` until the first resumed epoch ends)."""
        self.start_epoch = start_epoch
        self._saved_epoch_s = epoch_seconds
        if self.budget_s is not None and epoch_seconds:
            self.planned = min(self.epochs, start_epoch + max(1, math.floor(self.budget_s / epoch_seconds)))

    def epoch_seconds(self) -> float | None:
        """A typical epoch's time here: the larger of this session's mean and its last (a slowing machine shows in
        the last first); before an epoch ended, the one a resumed checkpoint recorded."""
        if not self._epoch_seconds:
            return self._saved_epoch_s
        return max(sum(self._epoch_seconds) / len(self._epoch_seconds), self._epoch_seconds[-1])

    def restart(self) -> None:
        """The session's clock starts now (training starts after the data and the model are ready)."""
        self.t0 = self._epoch_t0 = self.clock()

    def total_steps(self) -> int:
        """The schedule's horizon in steps."""
        return self.planned * self.steps_per_epoch

    def estimate(self, step_s: float, threads: int | None) -> str:
        """One line, said once after the first steps: the time per step here, the whole run's time, and where the
        budget stops it."""
        todo = (self.epochs - self.start_epoch) * self.steps_per_epoch
        where = f"{threads} thread{'s' if threads != 1 else ''}, " if threads else ""
        text = (f"about {1000 * step_s:.0f} ms a step here ({where}{os.cpu_count()} cores): "
                f"{self.epochs - self.start_epoch} epochs × {self.steps_per_epoch} steps ≈ "
                f"{format_seconds(todo * step_s)} plus validation")
        if self.budget_s is not None:
            fit = self.budget_s / (self.steps_per_epoch * step_s)
            if fit < self.epochs - self.start_epoch:
                text += (f"; the time limit ({format_seconds(self.budget_s)}) allows about "
                         f"{max(1, math.floor(fit))} of them, so the learning rate is annealed to end then")
            else:
                text += f", within the time limit ({format_seconds(self.budget_s)})"
        return text

    def epoch_done(self, epoch: int) -> bool:
        """After epoch ``epoch`` (0-based, whole run): replan the schedule to the epochs that still fit; True when
        the next epoch would end past the budget."""
        now = self.clock()
        self._epoch_seconds.append(now - self._epoch_t0)
        self._epoch_t0 = now
        if self.budget_s is None:
            return False
        typical = self.epoch_seconds() or 0.0
        more = math.floor((self.budget_s - self.elapsed) / typical) if typical > 0 else self.epochs
        self.planned = min(self.epochs, epoch + 1 + max(0, more))
        return more < 1 and epoch + 1 < self.epochs
