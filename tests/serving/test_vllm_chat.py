"""The chat defaults ``aligngpt serve --engine vllm`` gives vLLM, for every template saved in a model folder: the
template file (the processor's own, one source), the prompt ids vLLM's chat path computes from it, the stop strings
and the middleware that adds them to each request. No engine is started (serving/vllm/tests/render_chats.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from aligngpt.processing import AlignGPTProcessor
from aligngpt.processing.templates import IMAGE_TOKEN, TEMPLATES, Segment, get_template
from tests.serving.models import tiny_vllm_model_dir
from tests.serving.vllm_env import run_in_vllm_env, vllm_env_run

QUESTION, ANSWER, FOLLOW_UP = "What is in the picture?", "A red car.", "Which color is it?"
IMAGE_TEXT = f"{IMAGE_TOKEN}\n{QUESTION}"
IMAGE_BLOCKS = [{"type": "image"}, {"type": "text", "text": QUESTION}]
# The two forms vLLM hands a template (content blocks, or a string with the placeholder in front of the text) and
# the aligngpt chat they stand for: (message, history, image in the first user turn).
CONVERSATIONS = {
    "image_blocks": ([{"role": "user", "content": IMAGE_BLOCKS}], (QUESTION, [], True)),
    "image_string": ([{"role": "user", "content": IMAGE_TEXT}], (QUESTION, [], True)),
    "text_only": ([{"role": "user", "content": QUESTION}], (QUESTION, [], False)),
    "history": (
        [
            {"role": "user", "content": IMAGE_BLOCKS},
            {"role": "assistant", "content": ANSWER},
            {"role": "user", "content": FOLLOW_UP},
        ],
        (FOLLOW_UP, [(QUESTION, ANSWER)], True),
    ),  # fmt: skip
}
REQUESTS = [
    {"messages": [{"role": "user", "content": QUESTION}]},
    {"messages": [{"role": "user", "content": QUESTION}], "stop": "END"},
    {"messages": [{"role": "user", "content": QUESTION}], "stop": ["</s>", "x"], "stop_token_ids": [5]},
]


def aligngpt_prompt(name: str, message: str, history: list, image: bool) -> str:
    """The prompt aligngpt's pipeline builds: the image placeholder in front of the first user turn."""
    if image and history:
        history = [(f"{IMAGE_TOKEN}\n{history[0][0]}", history[0][1]), *history[1:]]
    elif image:
        message = f"{IMAGE_TOKEN}\n{message}"
    return get_template(name).generation_prompt(message, history)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm-chat")
    model_dir = tiny_vllm_model_dir(work / "tiny")
    spec = work / "spec.json"
    spec.write_text(json.dumps({"conversations": {k: v[0] for k, v in CONVERSATIONS.items()}, "requests": REQUESTS}))
    out = work / "out.json"
    run_in_vllm_env("render_chats.py", "--model", str(model_dir), "--spec", str(spec), "--out", str(out))
    return model_dir, json.loads(out.read_text())


def test_every_template_renders_aligngpts_prompt_ids_in_vllm(rendered):
    model_dir, got = rendered
    processor = AlignGPTProcessor.from_pretrained(model_dir)
    assert sorted(got["templates"]) == sorted(TEMPLATES)
    for name in TEMPLATES:
        for conversation, (_, chat) in CONVERSATIONS.items():
            expected = processor._tokenize_segments([Segment(aligngpt_prompt(name, *chat))])[0]
            assert got["templates"][name]["ids"][conversation] == expected, (name, conversation)


def test_the_folders_template_files_and_stop_strings_are_served(rendered):
    model_dir, got = rendered
    vocab = AlignGPTProcessor.from_pretrained(model_dir).tokenizer.get_vocab()
    for name, report in got["templates"].items():
        stops = list(get_template(name).stop_strings)
        assert report["stop"] == stops, name
        assert report["stop_token_ids"] == [vocab[s] for s in stops if s in vocab], name
        argv = report["argv"]
        assert argv[argv.index("--chat-template") + 1] == str(model_dir / "additional_chat_templates" / f"{name}.jinja")
        assert argv[argv.index("--tokenizer-mode") + 1] == "aligngpt"
        assert argv[argv.index("--middleware") + 1] == "aligngpt_vllm.middleware.ChatDefaultsMiddleware"
        assert "--template" not in argv
    default = got["default"]
    assert default["argv"][default["argv"].index("--chat-template") + 1] == str(model_dir / "chat_template.jinja")
    assert default["ids"] == got["templates"]["vicuna_v1"]["ids"]  # the folder's chat_template_name
    assert default["stop_token_ids"] == [vocab["</s>"]]


def test_the_middleware_adds_the_templates_stops_to_each_request(rendered):
    _, got = rendered
    first, second, third = got["rewritten"]
    assert first["stop"] == ["</s>"] and first["stop_token_ids"] == [2]
    assert second["stop"] == ["END", "</s>"] and second["stop_token_ids"] == [2]
    assert third["stop"] == ["</s>", "x"] and third["stop_token_ids"] == [5, 2]
    assert [r["messages"] for r in got["rewritten"]] == [r["messages"] for r in REQUESTS]


def test_an_unknown_template_or_a_folder_without_templates_is_refused(tmp_path):
    model_dir = tiny_vllm_model_dir(tmp_path / "tiny")
    serve = ["-m", "aligngpt_vllm.serve", "--model", str(model_dir)]
    done = vllm_env_run(*serve, "--template", "qwen")
    assert done.returncode != 0
    assert f"no chat template 'qwen' in {model_dir}; saved: chatml, gemma" in done.stderr
    (model_dir / "chat_template.jinja").unlink()
    shutil.rmtree(model_dir / "additional_chat_templates")
    done = vllm_env_run(*serve)
    assert done.returncode != 0
    assert f"{model_dir / 'chat_template.jinja'} not found: {model_dir} holds no aligngpt chat templates" in done.stderr
