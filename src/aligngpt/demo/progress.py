"""Progress lines of ``aligngpt demo``: after each stage, the time since the start and an estimate of what is left.

The estimate is priced from stage 1, the first stage whose cost scales with the preset: stage 1's recorded wall seconds
divided by its step rounds (``ceil(jobs / workers)`` jobs in a row per worker, ``steps`` optimizer steps each) gives
seconds per step; stage 2 is estimated as its own step rounds times that. Stage-2 steps carry longer sequences than
stage-1 steps, and the level sweep and the evaluation have no such basis, so the figure is a lower bound and is printed
as "at least". Jobs that will be reused cost nothing. Until stage 1 has finished the line says "estimate after stage 1".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

NO_ESTIMATE_YET = "estimate after stage 1"


def step_rounds(jobs: int, workers: int) -> int:
    """How many jobs run one after the other on a worker when ``jobs`` share ``workers`` workers."""
    return math.ceil(jobs / workers) if jobs else 0


@dataclass(frozen=True)
class PlannedStage:
    """A stage not yet finished: ``pending`` of its jobs will run (the rest are reused)."""

    name: str
    pending: int
    steps: int = 0  # optimizer steps per job; 0 for a stage that does not train


def _clock_text(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


class DemoClock:
    """Prints ``[demo] progress: ...`` after each stage through ``echo``."""

    def __init__(self, echo: Callable[[str], None], workers: int, clock: Callable[[], float] = time.perf_counter):
        self.echo = echo
        self.workers = workers
        self.clock = clock
        self.start = clock()
        self.seconds_per_step: float | None = None
        self.remaining: list[PlannedStage] = []

    def plan(self, stages: list[PlannedStage]) -> None:
        """The stages still to come, in order (known once their jobs are built)."""
        self.remaining = list(stages)

    def measure(self, seconds: float, jobs: int, steps: int) -> None:
        """Record a training stage's wall ``seconds`` for ``jobs`` jobs of ``steps`` steps as the price per step."""
        rounds = step_rounds(jobs, self.workers) * steps
        if rounds and seconds > 0:
            self.seconds_per_step = seconds / rounds

    def estimate(self) -> str:
        """The text for the time left after the stages finished so far."""
        if self.seconds_per_step is None:
            return NO_ESTIMATE_YET
        seconds, trained, unpriced = 0.0, [], []
        for stage in self.remaining:
            if not stage.pending:
                continue
            if stage.steps:
                seconds += step_rounds(stage.pending, self.workers) * stage.steps * self.seconds_per_step
                trained.append(stage.name)
            else:
                unpriced.append(stage.name)
        later = f"{', '.join(unpriced)} not estimated"
        if trained:
            priced = f"{', '.join(trained)} at stage 1's {self.seconds_per_step:.2f} s per step"
            return f"at least {_clock_text(seconds)} left ({priced}{'; ' + later if unpriced else ''})"
        return f"left: {later}" if unpriced else "nothing left to run"

    def finished(self, name: str) -> None:
        """Stage ``name`` is done: drop it from the plan and print the progress line."""
        self.remaining = [stage for stage in self.remaining if stage.name != name]
        elapsed = _clock_text(self.clock() - self.start)
        self.echo(f"[demo] progress: {name} finished, {elapsed} elapsed; {self.estimate()}")
