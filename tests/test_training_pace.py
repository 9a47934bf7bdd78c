"""Training by time as well as epochs (issue 33): the budget is planned epoch by epoch and held, the learning rate
annealed to the epochs that fit, the thread count that is fastest now kept, an estimate said up front."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from trainer.loop import _lr_factor, train
from trainer.pace import Pace, ThreadProbe, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_plans_the_epochs_that_fit_and_never_starts_one_that_would_end_past_it() -> None:
    """Epochs of 0.3 s in a 1 s budget: three fit; the schedule's horizon follows, and the run stops after the third
    with its end inside the budget."""
    clock = FakeClock()
    pace = Pace(epochs=10, steps_per_epoch=5, max_minutes=1 / 60, clock=clock)
    stops = []
    for epoch in range(10):
        clock.now += 0.3
        stops.append(pace.epoch_done(epoch))
        if stops[-1]:
            break
    assert stops == [False, False, True]
    assert pace.planned == 3 and pace.total_steps() == 15
    assert pace.elapsed <= 1.0


def test_the_plan_grows_again_when_epochs_get_faster_and_never_passes_the_epochs_asked_for() -> None:
    clock = FakeClock()
    pace = Pace(epochs=6, steps_per_epoch=1, max_minutes=1 / 60, clock=clock)
    clock.now += 0.5  # a slow first epoch: one more fits
    assert not pace.epoch_done(0) and pace.planned == 2
    clock.now += 0.01  # the machine freed up: the mean epoch is 0.255 s, 1.92 more fit
    assert not pace.epoch_done(1) and pace.planned == 3
    fast = Pace(epochs=6, steps_per_epoch=1, max_minutes=10, clock=clock)
    clock.now += 0.01
    assert not fast.epoch_done(0) and fast.planned == 6


def test_without_a_budget_the_plan_is_every_epoch_and_nothing_stops_early() -> None:
    clock = FakeClock()
    pace = Pace(epochs=4, steps_per_epoch=3, max_minutes=None, clock=clock)
    for epoch in range(4):
        clock.now += 1000
        assert not pace.epoch_done(epoch)
    assert pace.total_steps() == 12


def test_the_learning_rate_ends_annealed_at_the_planned_horizon() -> None:
    """The cosine reaches min_learning_rate at the planned end, wherever the budget put it."""
    class Optim:
        warmup_steps, learning_rate, min_learning_rate = 2, 1e-3, 1e-5

    short, long = _lr_factor(15, 15, Optim), _lr_factor(15, 50, Optim)
    assert short == pytest.approx(Optim.min_learning_rate / Optim.learning_rate, rel=1e-6)
    assert long > 0.5


def test_the_estimate_names_the_step_time_the_whole_run_and_what_the_budget_allows() -> None:
    pace = Pace(epochs=20, steps_per_epoch=100, max_minutes=0.5)
    text = pace.estimate(0.05, threads=1)
    assert "50 ms a step" in text and "1 thread," in text and "20 epochs × 100 steps ≈ 1.7 min" in text
    assert "allows about 6 of them" in text  # 30 s / (100 × 0.05 s)
    roomy = Pace(epochs=2, steps_per_epoch=10, max_minutes=5).estimate(0.05, threads=2)
    assert "within the time limit (5.0 min)" in roomy
    assert format_seconds(42) == "42 s" and format_seconds(300) == "5.0 min" and format_seconds(7200) == "2.0 h"


def test_the_thread_probe_keeps_the_fastest_count_and_sets_it() -> None:
    before = torch.get_num_threads()
    try:
        probe = ThreadProbe([4, 2, 1], steps_each=3)
        seen = []
        per_step = {4: 0.09, 2: 0.05, 1: 0.07}  # a busy machine: half the cores beat all of them
        for step in range(9):
            probe.before(step)
            seen.append(torch.get_num_threads())
            probe.after(step, per_step[probe.candidates[step // 3]] + (0.5 if step % 3 == 0 else 0.0))
        assert seen == [4, 4, 4, 2, 2, 2, 1, 1, 1]
        assert probe.chosen == 2 and torch.get_num_threads() == 2
        assert probe.step_seconds() == pytest.approx(0.05)  # the switch's first step is not counted
        probe.before(9)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_budgeted_run_says_its_estimate_stops_by_its_plan_and_gives_the_threads_back(
        tmp_path: Path, tiny_config, sim_stack: tuple[np.ndarray, np.ndarray]) -> None:
    """A real tiny run with adapt_threads and a budget far below one epoch: the estimate is said once, the run
    stops after its first epoch (it always runs one) saying why, and the process's thread count is as before."""
    before = torch.get_num_threads()
    buffer = io.StringIO()
    cfg = tiny_config(optim={"epochs": 4, "steps_per_epoch": 12, "max_minutes": 1e-6, "adapt_threads": True,
                             "num_threads": None})

    result = train(cfg, [sim_stack[0]], tmp_path, console=Console(file=buffer, width=200))

    said = buffer.getvalue()
    assert said.count("ms a step here") == 1 and "allows about 1 of them" in said
    assert result.epochs == 1 and result.stopped.startswith("time limit") and "1 of 4 epochs" in result.stopped
    assert torch.get_num_threads() == before


def test_a_slowing_machine_plans_by_its_last_epoch_and_a_resume_by_the_recorded_one() -> None:
    """Epochs of 0.1 s then 0.4 s in a 1 s budget: planned by the slower last one (no epoch that would end past the
    budget at that pace); a resumed run with the checkpoint's epoch time plans from its first resumed epoch."""
    clock = FakeClock()
    pace = Pace(epochs=20, steps_per_epoch=1, max_minutes=1 / 60, clock=clock)
    clock.now += 0.1
    assert not pace.epoch_done(0) and pace.planned == 10  # 0.9 s left at 0.1 s an epoch
    clock.now += 0.4
    assert pace.epoch_done(1) is False and pace.epoch_seconds() == pytest.approx(0.4)
    assert pace.planned == 3  # 0.5 s left at 0.4 s (the mean, 0.25, would plan 4 and overrun)
    resumed = Pace(epochs=20, steps_per_epoch=1, max_minutes=1 / 60, clock=clock)
    resumed.resume(5, 0.3)
    assert resumed.planned == 8 and resumed.epoch_seconds() == pytest.approx(0.3)  # 5 done, 3 more fit in 1 s
    unbudgeted = Pace(epochs=20, steps_per_epoch=1, max_minutes=None, clock=clock)
    unbudgeted.resume(5, 0.3)
    assert unbudgeted.planned == 20


def test_the_thread_probe_times_the_counts_again_when_the_load_changes() -> None:
    """A run alone chooses 2 threads; a second training starts beside it and its steps take 3 times as long: after
    a block of such steps the counts are timed again from the next step, and 1 thread, faster now, is kept. Steady
    steps (within 1.5 times the chosen count's) never start a probe."""
    before = torch.get_num_threads()
    try:
        probe = ThreadProbe([2, 1], steps_each=2, window=4)
        alone, busy = {2: 0.05, 1: 0.08}, {2: 0.15, 1: 0.06}
        seen = []
        for step in range(40):
            load = alone if step < 12 else busy
            probe.before(step)
            seen.append(torch.get_num_threads())
            count = probe.candidates[(step - probe._start) // 2] if probe.probing else probe.chosen
            probe.after(step, load[count])
        # probe 0-3 (2 chosen), steps 4-11 steady (two blocks, no probe), 12-15 busy at 2: a probe from 16 to 19
        assert seen[:4] == [2, 2, 1, 1] and seen[4:16] == [2] * 12
        assert seen[16:20] == [2, 2, 1, 1] and seen[20:] == [1] * 20
        assert probe.reprobes == 1 and probe.chosen == 1 and torch.get_num_threads() == 1
        assert probe.step_seconds() == pytest.approx(0.06)
    finally:
        torch.set_num_threads(before)
