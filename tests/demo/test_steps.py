"""The demo's step runner: finished steps are kept and reused, a stage cut short resumes with the jobs left, changed
settings rerun only their job, parallel jobs come back recorded, and a damaged ``steps.json`` is a clear error."""

from __future__ import annotations

import json
import operator
import os
import time

import pytest
from typer.testing import CliRunner

from aligngpt.cli import app
from aligngpt.demo.steps import (
    STEPS_FILE,
    DamagedStepLog,
    Job,
    StepLog,
    StepRunner,
    WorkerPool,
    digest,
    set_threads,
)


def _runner(tmp_path, lines: list[str], workers: int = 1) -> StepRunner:
    return StepRunner(StepLog(tmp_path / STEPS_FILE), WorkerPool(workers), lines.append)


def test_a_step_runs_once_and_is_reused_with_the_same_settings(tmp_path):
    calls, lines = [], []
    assert _runner(tmp_path, lines).step("world", {"seed": 0}, lambda: calls.append(1) or "done") == "done"
    assert lines == ["[demo] world ...", "[demo] world: done in 0 s"]
    recorded = json.loads((tmp_path / STEPS_FILE).read_text())
    assert recorded["world"]["digest"] == digest({"seed": 0}) and recorded["world"]["result"] == "done"

    lines.clear()
    assert _runner(tmp_path, lines).step("world", {"seed": 0}, lambda: calls.append(2)) == "done"
    assert calls == [1] and lines == ["[demo] world: reused (0 s when it ran)"]
    _runner(tmp_path, lines).step("world", {"seed": 1}, lambda: calls.append(3))  # changed settings run again
    assert calls == [1, 3]


def test_a_stage_cut_short_keeps_its_finished_jobs_and_resumes_with_the_rest(tmp_path):
    ran = []

    def job(name: str, fail: bool = False):
        def run():
            if fail:
                raise KeyboardInterrupt  # the user stopped the run in the middle of the stage
            ran.append(name)
            return {"job": name}

        return run

    first = [Job("a", {"n": 1}, job("a")), Job("b", {"n": 2}, job("b", fail=True)), Job("c", {"n": 3}, job("c"))]
    with pytest.raises(KeyboardInterrupt):
        _runner(tmp_path, []).stage("stage", first)
    assert set(json.loads((tmp_path / STEPS_FILE).read_text())) == {"a"}  # written the moment it ended

    lines = []
    runner = _runner(tmp_path, lines)
    second = [Job("a", {"n": 1}, job("a")), Job("b", {"n": 2}, job("b")), Job("c", {"n": 3}, job("c"))]
    assert runner.pending(second) == 2
    results = runner.stage("stage", second)
    assert ran == ["a", "b", "c"]  # a ran once, in the first run
    assert results == {"a": {"job": "a"}, "b": {"job": "b"}, "c": {"job": "c"}}
    assert lines[:2] == ["[demo] a: reused", "[demo] stage: b, c (1 at a time)"]
    assert lines[2:4] == ["[demo] b: done", "[demo] c: done"] and lines[4].startswith("[demo] stage: done in ")

    lines.clear()
    changed = [Job("a", {"n": 1}, job("a")), Job("b", {"n": 20}, job("b")), Job("c", {"n": 3}, job("c"))]
    runner.stage("stage", changed)
    assert ran == ["a", "b", "c", "b"]
    assert lines[:4] == ["[demo] a: reused", "[demo] c: reused", "[demo] stage: b (1 at a time)", "[demo] b: done"]


def test_job_seconds_add_up_to_the_stage_wall_time(tmp_path):
    pause = 0.05
    runner = _runner(tmp_path, [])
    start = time.perf_counter()
    runner.stage("stage", [Job(name, {}, time.sleep, (pause,)) for name in ("a", "b", "c")])
    wall = time.perf_counter() - start
    seconds = [runner.log.steps[name]["seconds"] for name in ("a", "b", "c")]
    assert all(s >= pause for s in seconds)
    assert sum(seconds) <= wall


def test_parallel_jobs_run_in_worker_processes_and_are_recorded(tmp_path):
    lines = []
    runner = _runner(tmp_path, lines, workers=2)
    jobs = [Job(f"add/{n}", {"n": n}, operator.add, (n, 10)) for n in range(3)] + [Job("pid", {}, os.getpid)]
    try:
        results = runner.stage("sums", jobs)
    finally:
        runner.pool.close()
    assert results.pop("pid") != os.getpid()  # ran in a worker
    assert results == {"add/0": 10, "add/1": 11, "add/2": 12}
    assert lines[0] == "[demo] sums: add/0, add/1, add/2, pid (2 at a time)"
    assert sorted(lines[1:5]) == ["[demo] add/0: done", "[demo] add/1: done", "[demo] add/2: done", "[demo] pid: done"]
    log = StepLog(tmp_path / STEPS_FILE)
    assert {name: step["result"] for name, step in log.steps.items() if name != "pid"} == results
    assert StepRunner(log, WorkerPool(2), lines.append).pending(jobs) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"world": {"digest": "ab"', "not valid JSON"),
        ("[]", "expected an object of steps, found list"),
        ('{"world": {"digest": "ab"}}', "step 'world' lacks digest, result"),
    ],
)
def test_a_damaged_steps_file_is_refused_with_its_path(tmp_path, text, message):
    path = tmp_path / STEPS_FILE
    path.write_text(text)
    with pytest.raises(DamagedStepLog, match=message) as caught:
        StepLog(path)
    assert str(path) in str(caught.value)


def test_the_demo_refuses_a_damaged_steps_file_without_a_traceback(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / STEPS_FILE).write_text('{"world": ')  # cut short: a full disk, or a copy that stopped
    result = CliRunner().invoke(app, ["demo", "--size", "smoke", "--out", str(out), "--workers", "1"])
    assert result.exit_code == 1
    assert f"error: {out / STEPS_FILE}: not valid JSON" in result.output
    assert not (out / "world").exists()


def _one_thread_job(value: int) -> int:
    set_threads(1)
    return value


def test_a_job_run_in_this_process_leaves_the_callers_thread_count():
    import torch

    torch.set_num_threads(2)
    results = list(WorkerPool(1).run([(_one_thread_job, (7,))]))
    assert results == [(0, 7)]
    assert torch.get_num_threads() == 2
