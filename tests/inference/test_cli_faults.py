"""User faults in ``chat``, ``predict`` and ``serve`` end with a short message naming the file, never a traceback."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aligngpt.cli import app
from aligngpt.inference.images import ImageError, load_image
from tests.helpers import clean_failure, fill_disk_for, subprocess_env

# "At once" = before torch or transformers is imported (loading them took ~19 s on a busy machine): the CLI runs in a
# child process that reports which of them it had imported when it exited.
IMPORTS_AT_EXIT = (
    "import sys\n"
    "from aligngpt.cli import app\n"
    "try:\n"
    "    app(prog_name='aligngpt')\n"
    "finally:\n"
    "    print('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
)


@pytest.fixture(scope="module")
def truncated_model(tiny_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("truncated") / "model"
    shutil.copytree(tiny_model, folder)
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    return folder


@pytest.fixture
def questions(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "text": f"Say {i}."}) + "\n" for i in range(3)))
    return path


def test_truncated_weights_are_named_by_predict_and_serve(truncated_model, questions, tmp_path):
    weights = str(truncated_model / "model.safetensors")
    predict = ["predict", "--model", str(truncated_model), "--questions", str(questions), "--out", str(tmp_path / "a")]
    for args in (predict, ["serve", "--model", str(truncated_model), "--port", "0"]):
        output = clean_failure(CliRunner().invoke(app, args))
        assert weights in output and "truncated" in output


def test_truncated_weights_through_the_installed_entry_point(truncated_model, questions, tmp_path):
    """The real command line (not CliRunner) goes through the same boundary: one line on stderr, exit 1."""
    env = subprocess_env()
    args = [sys.executable, "-m", "aligngpt.cli", "predict", "--model", str(truncated_model),
            "--questions", str(questions), "--out", str(tmp_path / "a.jsonl")]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert str(truncated_model / "model.safetensors") in done.stderr


def test_missing_model_folder_is_reported_at_once(tmp_path):
    missing = tmp_path / "missing" / "folder"
    env = subprocess_env()
    chat = [sys.executable, "-c", IMPORTS_AT_EXIT, "chat", "--model", str(missing)]
    done = subprocess.run(chat, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 1 and done.stderr.strip() == f"error: model folder {missing} does not exist"
    assert "loaded: []" in done.stdout  # refused before any model library was imported
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "text": "hi"}\n')
    for args in (
        ["predict", "--model", str(missing), "--questions", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "a")],
        ["serve", "--model", str(missing)],
        ["eval", "--model", str(missing), "--benchmark", "pope", "--data-dir", str(tmp_path), "--out", str(tmp_path)],
    ):
        assert f"model folder {missing} does not exist" in clean_failure(CliRunner().invoke(app, args))


def test_a_hub_shaped_missing_name_is_reported_at_once_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    output = clean_failure(CliRunner().invoke(app, ["chat", "--model", "missing/folder"]))
    assert "model folder missing/folder does not exist" in output and "HF_HUB_OFFLINE" in output


def test_a_full_disk_during_predict_names_the_answer_file(tiny_model, questions, tmp_path, monkeypatch):
    out = tmp_path / "answers.jsonl"
    fill_disk_for(monkeypatch, out.name)
    args = ["predict", "--model", str(tiny_model), "--questions", str(questions), "--out", str(out),
            "--max-new-tokens", "2"]  # fmt: skip
    output = clean_failure(CliRunner().invoke(app, args))
    assert "no space left on device while writing" in output and str(out) in output


def test_a_bug_still_shows_its_traceback(tiny_model, questions, tmp_path, monkeypatch):
    """The boundary turns user faults into messages; anything else must surface as the exception it is."""
    import aligngpt.inference.predict as predict

    def broken(*args, **kwargs):
        raise KeyError("a bug in our code")

    monkeypatch.setattr(predict, "predict_file", broken)
    args = ["predict", "--model", str(tiny_model), "--questions", str(questions), "--out", str(tmp_path / "a")]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, KeyError)


def test_traceback_of_a_user_fault_on_request(truncated_model, questions, tmp_path, monkeypatch):
    from aligngpt.errors import TRACEBACK_ENV
    from aligngpt.model_files import DamagedModelError

    monkeypatch.setenv(TRACEBACK_ENV, "1")
    args = ["predict", "--model", str(truncated_model), "--questions", str(questions), "--out", str(tmp_path / "a")]
    assert isinstance(CliRunner().invoke(app, args).exception, DamagedModelError)


def test_image_errors_do_not_leak_python_object_names(tiny_model, tmp_path):
    junk = base64.b64encode(b"certainly not an image").decode()
    with pytest.raises(ImageError) as err:
        load_image(f"data:image/png;base64,{junk}")
    assert "object at 0x" not in str(err.value) and "not a recognised image format" in str(err.value)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"certainly not an image")
    output = clean_failure(CliRunner().invoke(app, ["chat", "--model", str(tiny_model), "--image", str(bad)]))
    assert str(bad) in output and "object at 0x" not in output and "BytesIO" not in output
