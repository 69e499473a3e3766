"""``aligngpt chat``: multi-turn history without leaked stop tokens, commands, the gate chart."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from aligngpt.cli import app
from aligngpt.inference import GenerationSettings
from aligngpt.inference.chart import alignment_chart, bar
from aligngpt.inference.chat import ChatSession
from tests.inference.conftest import png_bytes

GREEDY = GenerationSettings(max_new_tokens=8, temperature=0.0)


def test_history_holds_visible_answers_only(pipeline, red_image):
    session = ChatSession(pipeline, red_image, GREEDY)
    streamed: list[str] = []
    first = session.ask("what is in the picture?", streamed.append)
    assert "".join(streamed).strip() == first
    assert session.history == [("what is in the picture?", first)]
    assert session.last_alignment is not None and len(session.last_alignment.weights) == 7
    prompt = session.prompt("and the colour?")
    # One separator per finished turn: the answer brings no "</s>" of its own.
    assert prompt.count("</s>") == 1
    assert prompt.count("<image>") == 1 and prompt.index("<image>") < prompt.index("what is in the picture?")
    second = session.ask("and the colour?")
    assert len(session.history) == 2 and session.history[1] == ("and the colour?", second)
    session.reset()
    assert session.history == [] and session.image is red_image


def test_stop_string_never_reaches_history(pipeline, red_image):
    free = ChatSession(pipeline, red_image, GREEDY).ask("what is in the picture?")
    stop = free.split()[1]
    settings = GenerationSettings(max_new_tokens=8, temperature=0.0, stop=(stop,))
    session = ChatSession(pipeline, red_image, settings)
    answer = session.ask("what is in the picture?")
    assert stop not in answer and free.startswith(answer)
    assert stop not in session.history[0][1]


def test_alignment_chart_scales_to_largest_weight():
    lines = alignment_chart([0.1, 0.5, 0.4], width=10)
    assert len(lines) == 3 and lines[1].startswith("level 1") and lines[1].endswith("0.500")
    assert bar(0.5, 0.5, 10) == "█" * 10 and bar(0.25, 0.5, 10) == "█" * 5
    assert alignment_chart([]) == []


def test_chat_command_streams_and_handles_commands(tiny_model, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(color=(10, 200, 10)))
    (folder / "b.png").write_bytes(png_bytes(color=(10, 10, 200)))
    script = "\n".join(
        ["/images", "what is this?", "/alignment", "and now?", "/reset", "/image 1", "describe it", "/image 7",
         "/bogus", "/quit", "never sent"]
    )  # fmt: skip
    result = CliRunner().invoke(
        app,
        ["chat", "--model", str(tiny_model), "--image", str(folder), "--temperature", "0", "--max-new-tokens", "5",
         "--show-alignment"],
        input=script + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "0: a.png" in out and "1: b.png" in out
    assert out.count("ASSISTANT: ") == 3  # three questions, "never sent" comes after /quit
    assert "conversation cleared" in out and "new image:" in out and "b.png" in out
    assert "pick a number from 0 to 1" in out and "unknown command /bogus" in out
    # --show-alignment after each answer plus one /alignment: 4 charts of 7 levels.
    assert len(re.findall(r"^  level 6 ", out, flags=re.M)) == 4
    assert "</s>" not in out


def test_chat_command_reports_bad_image(tiny_model, tmp_path):
    result = CliRunner().invoke(app, ["chat", "--model", str(tiny_model), "--image", str(tmp_path / "none.png")])
    assert result.exit_code != 0 and "image file not found" in result.output


def test_chatml_model_without_bos_keeps_clean_history(tmp_path, red_image):
    from aligngpt import load
    from tests.helpers import tiny_model_dir

    pipeline = load(tiny_model_dir(tmp_path, llm="qwen2"), device="cpu")
    assert pipeline.template.name == "chatml"
    session = ChatSession(pipeline, red_image, GenerationSettings(max_new_tokens=6, temperature=0.0))
    session.ask("what is in the picture?")
    session.ask("tell me about colors")
    for _, answer in session.history:
        assert "<|im_end|>" not in answer and "<|endoftext|>" not in answer
    prompt = session.prompt("yes?")
    assert "<|im_end|><|im_end|>" not in prompt
    assert prompt.count("<|im_end|>") == 2 + 2 * len(session.history)  # system, each finished turn pair, new user
