"""The demo's step runner: a record of finished steps, so that a rerun or a resumed run skips them, and the jobs of a
stage run in parallel worker processes.

``steps.json`` holds, per step name, the digest of the settings it ran with, its wall seconds and its JSON-able result;
a step whose settings digest matches is reused, one whose settings changed runs again. Each finished job is recorded
the moment it ends (atomically), so an interrupted stage keeps the jobs that finished. A job's ``seconds`` is the wall
time since the previous job of its stage ended, so a stage's seconds add up to its wall time even when jobs overlap.

Nothing here knows the study: :mod:`aligngpt.demo.pipeline` says which steps run, with which settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from aligngpt.errors import UserError
from aligngpt.fileio import write_json_atomic

STEPS_FILE = "steps.json"
DIGEST_HEX_DIGITS = 16
# what a reuse needs; the runner also writes "seconds" (gate-probe records written before it have none)
RECORD_FIELDS = frozenset({"digest", "result"})


class DamagedStepLog(UserError, ValueError):
    """``steps.json`` cannot be read as a record of finished steps."""


def digest(settings: dict) -> str:
    """A short SHA-256 over the settings' canonical JSON (sorted keys; values JSON cannot hold as their ``str``)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_HEX_DIGITS]


@dataclass(frozen=True)
class Job:
    """One step: ``fn(*args)`` returns its JSON-able result; ``settings`` decide whether a recorded result is reused.

    A job that runs in a worker process needs a module-level ``fn`` and picklable ``args``; a job run in this process
    (one worker, or a stage with one job left to run) may be any callable.
    """

    name: str
    settings: dict
    fn: Callable[..., object]
    args: tuple = field(default=())


class StepLog:
    """``steps.json``: per step, its settings digest, wall seconds and result."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.steps: dict[str, dict] = _read_steps(self.path) if self.path.is_file() else {}

    def reusable(self, name: str, settings: dict) -> bool:
        """Whether step ``name`` finished with exactly these settings."""
        done = self.steps.get(name)
        return done is not None and done["digest"] == digest(settings)

    def result(self, name: str) -> object:
        return self.steps[name]["result"]

    def record(self, name: str, settings: dict, seconds: float, result: object) -> None:
        """Step ``name`` finished: store it and rewrite ``steps.json`` at once (atomically)."""
        self.steps[name] = {"digest": digest(settings), "seconds": seconds, "result": result}
        write_json_atomic(self.path, self.steps)


def _read_steps(path: Path) -> dict[str, dict]:
    try:
        steps = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedStepLog(f"{path}: not valid JSON ({err}); delete it to run every step again") from None
    if not isinstance(steps, dict):
        raise DamagedStepLog(f"{path}: expected an object of steps, found {type(steps).__name__}")
    for name, step in steps.items():
        if not isinstance(step, dict) or not step.keys() >= RECORD_FIELDS:
            raise DamagedStepLog(f"{path}: step {name!r} lacks {', '.join(sorted(RECORD_FIELDS))}; delete the step")
    return steps


def set_threads(threads: int) -> None:
    """Torch's intra-op thread count for a job (each worker runs its jobs on its share of the cores)."""
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def _keeping_threads() -> Iterator[None]:
    """A job run in this process may set torch's thread count (:func:`set_threads`); the caller gets its own back."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


class WorkerPool:
    """Spawned worker processes shared by every stage of a study, so each worker imports torch and transformers
    once rather than once per stage. With one worker (or one job) jobs run in this process, which keeps its torch
    thread count."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def run(self, jobs: list[tuple[Callable, tuple]]) -> Iterator[tuple[int, object]]:
        """Run ``jobs`` ``workers`` at a time; yields ``(job index, result)`` as each ends."""
        if self.workers <= 1 or len(jobs) <= 1:
            for index, (fn, args) in enumerate(jobs):
                with _keeping_threads():
                    result = fn(*args)
                yield index, result
            return
        if self._executor is None:
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        futures = {self._executor.submit(fn, *args): index for index, (fn, args) in enumerate(jobs)}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None


class StepRunner:
    """Runs single steps and stages of jobs against one :class:`StepLog` and one :class:`WorkerPool`.

    Progress lines go through ``echo``, each starting with ``[tag]``.
    """

    def __init__(self, log: StepLog, pool: WorkerPool, echo: Callable[[str], None], tag: str = "demo"):
        self.log = log
        self.pool = pool
        self.echo = echo
        self.tag = tag

    def pending(self, jobs: Sequence[Job]) -> int:
        """How many of ``jobs`` would run (the others are reused)."""
        return sum(not self.log.reusable(job.name, job.settings) for job in jobs)

    def step(self, name: str, settings: dict, fn: Callable[[], object]) -> object:
        """One step, run in this process unless ``steps.json`` holds it with these settings; returns its result."""
        return self.stage(name, [Job(name, settings, fn)])[name]

    def stage(self, name: str, jobs: Sequence[Job]) -> dict[str, object]:
        """Run the jobs not yet done (``pool.workers`` at a time) and record each as it ends; returns results by job
        name. A stage of one job that bears the stage's name is a single step, and is reported as one."""
        single = len(jobs) == 1 and jobs[0].name == name
        results: dict[str, object] = {}
        todo = []
        for job in jobs:
            if self.log.reusable(job.name, job.settings):
                when = f" ({self.log.steps[job.name]['seconds']:.0f} s when it ran)" if single else ""
                self.echo(f"[{self.tag}] {job.name}: reused{when}")
                results[job.name] = self.log.result(job.name)
            else:
                todo.append(job)
        if not todo:
            return results
        if single:
            self.echo(f"[{self.tag}] {name} ...")
        else:
            at_a_time = min(self.pool.workers, len(todo))
            self.echo(f"[{self.tag}] {name}: {', '.join(job.name for job in todo)} ({at_a_time} at a time)")
        start = last = time.perf_counter()
        for index, result in self.pool.run([(job.fn, job.args) for job in todo]):
            now = time.perf_counter()
            job = todo[index]
            self.log.record(job.name, job.settings, now - last, result)
            last = now
            results[job.name] = result
            if not single:
                self.echo(f"[{self.tag}] {job.name}: done")
        self.echo(f"[{self.tag}] {name}: done in {time.perf_counter() - start:.0f} s")
        return results
