"""``aligngpt eval score`` reproduces the SUMMARY.json headline numbers; usage errors are clear."""

from __future__ import annotations

import json

import pytest
from eval_helpers import JUDGED, ReplayJudge, fixture_dir, predictions_path
from eval_judge_server import ReplayServer
from typer.testing import CliRunner

from aligngpt.cli import app

SUMMARY = json.loads((fixture_dir("") / "SUMMARY.json").read_text(encoding="utf-8"))["benchmarks"]


def _score_args(name, out):
    return ["eval", "score", "--benchmark", name, "--data-dir", str(fixture_dir(name) / "inputs"),
            "--predictions", str(predictions_path(name)), "--out", str(out)]  # fmt: skip


@pytest.mark.parametrize("name", list(SUMMARY))
def test_eval_score_writes_summary_headline_numbers(name, tmp_path):
    args = _score_args(name, tmp_path)
    if name in JUDGED:
        server = ReplayServer(ReplayJudge(fixture_dir(name) / "inputs" / "judge_replies.json"))
        with server:
            result = CliRunner().invoke(app, [*args, "--judge-base-url", server.base_url])
    else:
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    for key, value in SUMMARY[name].items():
        if isinstance(value, dict):
            assert {k: float(v) for k, v in value.items()} == metrics[key]
        else:
            assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_unknown_benchmark_lists_the_known_ones(tmp_path):
    result = CliRunner().invoke(app, _score_args("pope", tmp_path)[:3] + ["nope"] + _score_args("pope", tmp_path)[4:])
    assert result.exit_code == 2
    assert "unknown benchmark 'nope'" in result.output and "mm_vet" in result.output


def test_missing_data_file_names_what_and_where(tmp_path):
    (tmp_path / "empty").mkdir()
    args = _score_args("gqa", tmp_path / "out")
    args[args.index("--data-dir") + 1] = str(tmp_path / "empty")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "GQA questions file not found" in result.output and str(tmp_path / "empty") in result.output


def test_benchmark_options_are_passed_through(tmp_path):
    result = CliRunner().invoke(app, [*_score_args("pope", tmp_path), "--option", "pair_by=question_id"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "metrics.json").read_text())["pair_by"] == "question_id"


@pytest.fixture
def keep_torch_threads():
    """``--threads`` sets torch's process-wide thread count; later tests must not inherit it."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_eval_group_calls_the_runner(monkeypatch, tmp_path, keep_torch_threads):
    import sys
    import types

    calls = []

    def run_evaluation(**kwargs):
        calls.append(kwargs)
        return {"pope": {"headline": 0.875}, "mm_vet": {"headline": 31.5}}

    runner = types.ModuleType("aligngpt.evaluation.runner")
    runner.run_evaluation, runner.SUMMARY_FILE = run_evaluation, "summary.md"
    monkeypatch.setitem(sys.modules, "aligngpt.evaluation.runner", runner)
    model = tmp_path / "m"
    model.mkdir()
    result = CliRunner().invoke(
        app,
        ["eval", "--model", str(model), "--benchmark", "POPE,mm-vet", "--data-dir", str(tmp_path), "--out",
         str(tmp_path), "--batch-size", "4", "--limit", "3", "--template", "vicuna_v1_nosys", "--dtype", "bfloat16",
         "--device", "cpu", "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls == [{"model": str(model), "benchmarks": ["pope", "mm_vet"], "data_dir": tmp_path,
                      "out_dir": tmp_path, "batch_size": 4, "limit": 3, "max_new_tokens": None,
                      "dtype": "bfloat16", "device": "cpu", "template": "vicuna_v1_nosys"}]  # fmt: skip
    # success prints the headline numbers and where the results are, as `eval score` does
    assert "pope: f1_mean = 0.875" in result.output and "mm_vet: total = 31.5" in result.output
    assert f"results written to {tmp_path}" in result.output


def test_eval_refuses_an_unknown_template_or_dtype_before_loading(tmp_path):
    common = ["eval", "--model", str(tmp_path), "--benchmark", "pope", "--data-dir", str(tmp_path), "--out",
              str(tmp_path)]  # fmt: skip
    bad_template = CliRunner().invoke(app, [*common, "--template", "nope"])
    assert bad_template.exit_code == 2 and "Unknown chat template 'nope'" in bad_template.output
    bad_dtype = CliRunner().invoke(app, [*common, "--dtype", "float8"])
    assert bad_dtype.exit_code == 2 and "--dtype" in bad_dtype.output


def test_eval_help_marks_required_options_and_shows_defaults():
    lines = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output.splitlines()

    def row(option: str) -> str:
        return next(line for line in lines if f" {option} " in line)

    for option in ("--model", "--benchmark", "--data-dir", "--out"):
        assert "[required]" in row(option), option
    assert "[required]" not in row("--batch-size") and "[default: 1]" in row("--batch-size")
    for option in ("--dtype", "--device", "--threads", "--template"):
        assert row(option)
