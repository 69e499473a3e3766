"""``aligngpt predict``: answer format, batching, resuming after a kill, input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aligngpt.cli import app
from aligngpt.inference import GenerationSettings
from aligngpt.inference.answers import PARTIAL_SUFFIX, AnswersChangedError, run_record_path
from aligngpt.inference.predict import predict_file, read_questions
from tests.inference.conftest import png_bytes

SETTINGS = GenerationSettings(max_new_tokens=4)


@pytest.fixture
def question_set(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "red.png").write_bytes(png_bytes(color=(220, 0, 0)))
    (images / "blue.png").write_bytes(png_bytes(color=(0, 0, 220)))
    questions = [
        {"question_id": 1, "image": "red.png", "text": "What colour is it?"},
        {"question_id": "q2", "image": "blue.png", "text": "Describe the image."},
        {"question_id": 3, "text": "Say hello."},  # text only
        {"question_id": "1", "image": "blue.png", "text": "Same id as 1 but a string."},
        {"question_id": 5, "image": "red.png", "text": "Anything else?", "category": "extra"},
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path, images, questions


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_writes_one_answer_per_question(pipeline, question_set, tmp_path):
    questions_path, images, questions = question_set
    out = tmp_path / "answers.jsonl"
    summary = predict_file(pipeline, questions_path, out, images, SETTINGS, batch_size=2, model_id="tiny")
    assert (summary.total, summary.answered_now, summary.already_answered) == (5, 5, 0)
    answers = _lines(out)
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    for answer, question in zip(answers, questions):
        assert set(answer) >= {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert answer["prompt"] == question["text"] and answer["model_id"] == "tiny"
        assert isinstance(answer["text"], str)
        metadata = answer["metadata"]
        if "image" in question:
            assert len(metadata["alignment_weights"]) == 7 and len(metadata["level_coefficients"]) == 8
        else:
            assert metadata["alignment_weights"] is None
    assert answers[0]["metadata"]["max_new_tokens"] == 4
    assert len({a["answer_id"] for a in answers}) == 5
    assert not (tmp_path / ("answers.jsonl" + PARTIAL_SUFFIX)).exists()
    # Batched answers equal one-at-a-time answers (greedy).
    single = pipeline.generate_batch([(None, "Say hello.")], SETTINGS)[0]
    assert answers[2]["text"] == single.text


def test_rerun_resumes_from_partial_and_skips_answered(pipeline, question_set, tmp_path, monkeypatch):
    questions_path, images, _ = question_set
    out = tmp_path / "answers.jsonl"
    predict_file(pipeline, questions_path, out, images, SETTINGS, batch_size=2, model_id="tiny")
    complete = out.read_text()

    # Simulate a run killed after two answers: a partial file with a torn last line, no final output.
    lines = complete.splitlines()
    out.unlink()
    partial = tmp_path / ("answers.jsonl" + PARTIAL_SUFFIX)
    partial.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:15])
    asked = []
    original = pipeline.generate_batch

    def counting(requests, settings=None, **kwargs):
        asked.extend(text for _, text in requests)
        return original(requests, settings, **kwargs)

    monkeypatch.setattr(pipeline, "generate_batch", counting)
    summary = predict_file(pipeline, questions_path, out, images, SETTINGS, batch_size=2, model_id="tiny")
    assert summary.already_answered == 2 and summary.answered_now == 3
    assert asked == ["Say hello.", "Same id as 1 but a string.", "Anything else?"]
    assert out.read_text() == complete  # same answers, same ids, same order
    assert not partial.exists()

    asked.clear()
    summary = predict_file(pipeline, questions_path, out, images, SETTINGS, model_id="tiny")
    assert summary.answered_now == 0 and asked == []
    assert out.read_text() == complete


def test_resume_appends_to_the_partial_file_and_renames_it(pipeline, question_set, tmp_path, monkeypatch):
    """After a kill or ENOSPC, a rerun needs room for the new answers only: no copy of the answers is written."""
    import errno

    from aligngpt.inference import answers

    questions_path, images, _ = question_set
    out = tmp_path / "answers.jsonl"
    predict_file(pipeline, questions_path, out, images, SETTINGS, batch_size=2, model_id="tiny")
    complete = out.read_text()
    lines = complete.splitlines()
    out.unlink()
    partial = tmp_path / ("answers.jsonl" + PARTIAL_SUFFIX)
    partial.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2])  # the last newline never made it
    inode = partial.stat().st_ino

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(answers, "atomic_write", disk_full)
    summary = predict_file(pipeline, questions_path, out, images, SETTINGS, batch_size=2, model_id="tiny")
    assert summary.already_answered == 2 and summary.answered_now == 3  # the unterminated line is redone
    assert out.read_text() == complete and out.stat().st_ino == inode  # appended to, then renamed
    assert not partial.exists()


def test_two_runs_write_the_same_bytes(pipeline, question_set, tmp_path):
    questions_path, images, _ = question_set
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (first, second):
        predict_file(pipeline, questions_path, out, images, SETTINGS, batch_size=2, model_id="tiny")
    assert first.read_bytes() == second.read_bytes()
    assert run_record_path(first).read_bytes() == run_record_path(second).read_bytes()


def test_a_rerun_with_other_settings_or_questions_is_refused(pipeline, question_set, tmp_path):
    """Answers are resumed only for the same model, settings and questions; the refusal says what changed."""
    questions_path, images, questions = question_set
    out = tmp_path / "answers.jsonl"
    predict_file(pipeline, questions_path, out, images, SETTINGS, batch_size=2, model_id="tiny")
    complete = out.read_bytes()
    with pytest.raises(AnswersChangedError, match="max_new_tokens: 4 -> 5"):
        predict_file(pipeline, questions_path, out, images, GenerationSettings(max_new_tokens=5), model_id="tiny")
    with pytest.raises(AnswersChangedError, match="model_id: 'tiny' -> 'other'"):
        predict_file(pipeline, questions_path, out, images, SETTINGS, model_id="other")
    questions[1]["text"] = "Describe the picture."
    questions_path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    with pytest.raises(AnswersChangedError, match=r"question 'q2' \(prompt\)"):
        predict_file(pipeline, questions_path, out, images, SETTINGS, model_id="tiny")
    questions_path.write_text("".join(json.dumps(q) + "\n" for q in questions[2:]))
    with pytest.raises(AnswersChangedError, match=r"answers to 2 question\(s\) this run does not ask"):
        predict_file(pipeline, questions_path, out, images, SETTINGS, model_id="tiny")
    assert out.read_bytes() == complete  # nothing lost
    out.with_name("answers.run.json").unlink()
    with pytest.raises(AnswersChangedError, match="no run record"):
        predict_file(pipeline, questions_path, out, images, SETTINGS, model_id="tiny")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "no id"}', "question_id"),
        ('{"question_id": 1, "text": 5}', "'text'"),
        ('{"question_id": 1, "text": "x", "image": 3}', "'image'"),
    ],
)
def test_bad_question_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 0, "text": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        read_questions(path)
    assert f"{path}:2" in str(err.value)


def test_duplicate_ids_and_missing_images_are_reported(pipeline, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 7, "text": "a"}\n{"question_id": 7, "text": "b"}\n')
    with pytest.raises(ValueError, match="repeats line 1"):
        read_questions(path)
    path.write_text('{"question_id": 1, "text": "a", "image": "gone.png"}\n')
    with pytest.raises(FileNotFoundError, match="line 1: gone.png"):
        predict_file(pipeline, path, tmp_path / "a.jsonl", tmp_path, SETTINGS)
    assert not (tmp_path / "a.jsonl").exists()


def test_predict_command(tiny_model, question_set, tmp_path):
    questions_path, images, _ = question_set
    out = tmp_path / "cli.jsonl"
    args = ["predict", "--model", str(tiny_model), "--questions", str(questions_path), "--images", str(images),
            "--out", str(out), "--max-new-tokens", "3", "--batch-size", "4"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 answered now, 0 already answered" in result.output
    assert len(_lines(out)) == 5 and _lines(out)[0]["model_id"] == tiny_model.name
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 answered now, 5 already answered" in again.output


def test_predict_prints_no_startup_noise(tiny_model, question_set, tmp_path):
    """No deprecation warning from the image processor and no per-tensor weight-loading progress bars."""
    import subprocess
    import sys

    from tests.helpers import subprocess_env

    questions_path, images, _ = question_set
    env = subprocess_env()
    args = [
        sys.executable,
        "-m",
        "aligngpt.cli",
        "predict",
        "--model",
        str(tiny_model),
        "--questions",
        str(questions_path),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "a.jsonl"),
        "--max-new-tokens",
        "2",
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for noise in ("use_fast", "deprecated", "Loading weights"):
        assert noise not in done.stderr, done.stderr
