"""``aligngpt eval``: batched generation on a benchmark in the official layout, resume, scoring, results record."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from aligngpt.cli import app
from aligngpt.evaluation.runner import ANSWERS_FILE, run_evaluation
from aligngpt.inference.answers import AnswersChangedError, partial_path, read_answers
from tests.helpers import FIXTURES, clean_failure, fill_disk_for, tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture()
def pope_root(tmp_path):
    """LLaVA's eval root with a ``pope/`` folder: the fixture's question and label files plus generated images."""
    folder = tmp_path / "eval" / "pope"
    shutil.copytree(FIXTURES / "metrics" / "pope" / "inputs", folder, ignore=shutil.ignore_patterns("answers"))
    (folder / "val2014").mkdir()
    for line in (folder / "llava_pope_test.jsonl").read_text().splitlines():
        name = json.loads(line)["image"]
        if not (folder / "val2014" / name).exists():
            Image.new("RGB", (24, 18), (len(name) * 7 % 255, 90, 160)).save(folder / "val2014" / name)
    return tmp_path / "eval"


def test_eval_generates_scores_and_resumes(model_dir, pope_root, tmp_path):
    out = tmp_path / "out"
    metrics = run_evaluation(model_dir, ["pope"], pope_root, out, batch_size=4, limit=12, max_new_tokens=4)
    answers = read_answers(out / "pope" / ANSWERS_FILE)
    assert [a["question_id"] for a in answers] == list(range(1, 13))
    assert all(len(a["metadata"]["alignment_weights"]) == 7 for a in answers)
    assert "adversarial" in json.dumps(metrics["pope"])
    results = json.loads((out / "pope" / "results.json").read_text())
    assert results["settings"]["template"] == "vicuna_v1" and results["settings"]["image_aspect_ratio"] == "pad"
    assert results["model"]["sha256"] and results["data"]["sha256"]
    assert (out / "summary.md").read_text().startswith("# Evaluation of model")

    # A killed run leaves a partial file with a torn last line: a rerun cuts it and answers the missing questions
    # only, and the finished file is the same, byte for byte, as the uninterrupted run's.
    path = out / "pope" / ANSWERS_FILE
    complete = path.read_bytes()
    lines = path.read_text().splitlines(keepends=True)
    path.unlink()
    partial_path(path).write_text("".join(lines[:5]) + lines[5][:17])
    run_evaluation(model_dir, ["pope"], pope_root, out, batch_size=4, limit=12, max_new_tokens=4)
    assert path.read_bytes() == complete and not partial_path(path).exists()
    assert json.loads((out / "pope" / "results.json").read_text())["n_generated_this_run"] == 7

    # Answers of other settings are never resumed: the rerun is refused, saying what changed; nothing is lost.
    with pytest.raises(AnswersChangedError, match="max_new_tokens: 4 -> 3"):
        run_evaluation(model_dir, ["pope"], pope_root, out, batch_size=4, limit=12, max_new_tokens=3)
    assert path.read_bytes() == complete
    assert json.loads((out / "pope" / "answers.run.json").read_text())["max_new_tokens"] == 4
    # A smaller --limit would score answers the run does not ask for: refused too.
    with pytest.raises(AnswersChangedError, match=r"answers to 8 question\(s\) this run does not ask"):
        run_evaluation(model_dir, ["pope"], pope_root, out, batch_size=4, limit=4, max_new_tokens=4)
    assert path.read_bytes() == complete


def test_resume_drops_only_a_torn_last_line_even_when_it_parses(model_dir, pope_root, tmp_path):
    """A kill (or ENOSPC) between an answer and its newline leaves a valid JSON line without "\\n": the next
    answer must not be glued onto it, and only that line is redone."""
    out = tmp_path / "out"
    run_evaluation(model_dir, ["pope"], pope_root, out, batch_size=4, limit=12, max_new_tokens=4)
    path = out / "pope" / ANSWERS_FILE
    complete = path.read_bytes()
    lines = path.read_text().splitlines(keepends=True)
    path.unlink()
    partial_path(path).write_text("".join(lines[:7]) + lines[7].rstrip("\n"))
    run_evaluation(model_dir, ["pope"], pope_root, out, batch_size=4, limit=12, max_new_tokens=4)
    assert path.read_bytes() == complete  # kept byte for byte (answer ids included), the rest redone identically
    assert json.loads((out / "pope" / "results.json").read_text())["n_generated_this_run"] == 5

    # A damaged complete line (e.g. two answers glued by an older version) costs only those answers.
    resumed = path.read_text().splitlines(keepends=True)
    path.write_text("".join(resumed[:3]) + resumed[3].rstrip("\n") + resumed[4] + "".join(resumed[5:]))
    run_evaluation(model_dir, ["pope"], pope_root, out, batch_size=4, limit=12, max_new_tokens=4)
    assert path.read_bytes() == complete
    assert json.loads((out / "pope" / "results.json").read_text())["n_generated_this_run"] == 2


def test_two_runs_write_the_same_bytes(model_dir, pope_root, tmp_path):
    """Answer ids are derived from the model and the question, so a rerun reproduces every output file exactly."""
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        run_evaluation(model_dir, ["pope"], pope_root, out, batch_size=4, limit=6, max_new_tokens=4)
    files = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert f"pope/{ANSWERS_FILE}" in files and "pope/results.json" in files
    assert sorted(str(p.relative_to(second)) for p in second.rglob("*") if p.is_file()) == files
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_eval_cli_names_a_missing_image(model_dir, pope_root, tmp_path):
    images = [
        json.loads(line)["image"] for line in (pope_root / "pope" / "llava_pope_test.jsonl").read_text().splitlines()
    ]
    first_new = next(k for k in range(1, len(images)) if images[k] not in images[:k])
    name = images[first_new]
    (pope_root / "pope" / "val2014" / name).unlink()
    result = CliRunner().invoke(
        app,
        ["eval", "--model", str(model_dir), "--benchmark", "pope", "--data-dir", str(pope_root),
         "--out", str(tmp_path / "o"), "--batch-size", "1", "--limit", str(first_new + 2), "--max-new-tokens", "4"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert name in result.output and "kept" in result.output  # a clear message, not a traceback
    # the answers before the missing image were kept (in the partial file: the answer file is not complete)
    assert len(read_answers(partial_path(tmp_path / "o" / "pope" / ANSWERS_FILE))) == first_new
    assert not (tmp_path / "o" / "pope" / ANSWERS_FILE).exists()


def _eval_args(model, pope_root, out, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--benchmark", "pope", "--data-dir", str(pope_root), "--out", str(out),
            "--batch-size", "2", "--limit", "4", "--max-new-tokens", "2", *extra]  # fmt: skip


def test_eval_prints_the_headline_number_and_the_output_folder(model_dir, pope_root, tmp_path):
    import torch

    out = tmp_path / "o"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, _eval_args(model_dir, pope_root, out, "--threads", "1", "--dtype", "float32"))
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide; later tests must not inherit it
    assert result.exit_code == 0, result.output
    headline = json.loads((out / "pope" / "metrics.json").read_text())["headline"]
    assert f"pope: f1_mean = {headline}" in result.output
    assert f"results written to {out}" in result.output


def test_a_full_disk_during_eval_names_the_answer_file(model_dir, pope_root, tmp_path, monkeypatch):
    out = tmp_path / "o"
    fill_disk_for(monkeypatch, ANSWERS_FILE)
    output = clean_failure(CliRunner().invoke(app, _eval_args(model_dir, pope_root, out)))
    assert f"no space left on device while writing {partial_path(out / 'pope' / ANSWERS_FILE)}" in output


def test_eval_names_truncated_weights(model_dir, pope_root, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    output = clean_failure(CliRunner().invoke(app, _eval_args(damaged, pope_root, tmp_path / "o")))
    assert f"{weights} is truncated" in output


def test_eval_names_an_undecodable_image(model_dir, pope_root, tmp_path):
    first = json.loads((pope_root / "pope" / "llava_pope_test.jsonl").read_text().splitlines()[0])
    (pope_root / "pope" / "val2014" / first["image"]).write_bytes(b"not a picture")
    output = clean_failure(CliRunner().invoke(app, _eval_args(model_dir, pope_root, tmp_path / "o")))
    assert first["image"] in output and "not a recognised image format" in output and "0x" not in output


def test_toyworld_limit_takes_n_per_set_and_scores_only_what_was_answered(model_dir, tmp_path):
    from aligngpt.toyworld.dataset import write_dataset

    world = tmp_path / "world"
    write_dataset(world, seed=3, n_pretrain=4, n_finetune=4, n_eval=6, progress=False)
    out = tmp_path / "out"
    metrics = run_evaluation(model_dir, ["toyworld"], world, out, batch_size=4, limit=2, max_new_tokens=2)
    answered = [r["question_id"] for r in read_answers(out / "toyworld" / ANSWERS_FILE)]
    assert [qid.split("-")[0] for qid in answered] == ["caption"] * 2 + ["vqa"] * 2 + ["pope"] * 2
    scores = metrics["toyworld"]["sets"]
    assert scores["caption"]["n"] == 2 and set(scores) == {"caption", "vqa", "pope"}
    assert scores["vqa"]["n"] == 2
