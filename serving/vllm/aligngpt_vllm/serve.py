"""``python -m aligngpt_vllm.serve --model FOLDER [--template NAME] [vLLM server options...]``: vLLM's OpenAI server
with aligngpt's defaults: ``--tokenizer-mode aligngpt``, the chat template saved in the folder (its default one, or
``--template NAME``: ``additional_chat_templates/NAME.jinja``) and that template's stop strings on every chat
request (:mod:`aligngpt_vllm.middleware`). Every other option goes to vLLM unchanged."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from aligngpt_vllm.chat import DEFAULTS_ENV, ChatDefaults, template_file, template_stop_strings
from aligngpt_vllm.tokenizer import TOKENIZER_MODE

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
MIDDLEWARE = "aligngpt_vllm.middleware.ChatDefaultsMiddleware"


def _option(argv: list[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def server_argv(argv: list[str]) -> tuple[list[str], Path]:
    """vLLM's arguments (``argv`` without ``--template``, plus the tokenizer mode, the chat template file and the
    middleware, unless given) and the chat template file."""
    model = _option(argv, "--model")
    if model is None:
        raise SystemExit("error: --model FOLDER is required")
    rest = [arg for index, arg in enumerate(argv) if not _is_template_arg(argv, index)]
    given = _option(rest, "--chat-template")
    try:
        path = Path(given) if given is not None else template_file(Path(model), _option(argv, "--template"))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    extra = []
    if _option(rest, "--tokenizer-mode") is None:
        extra += ["--tokenizer-mode", TOKENIZER_MODE]
    if given is None:
        extra += ["--chat-template", str(path)]
    return [*rest, *extra, "--middleware", MIDDLEWARE], path


def chat_defaults(model: Path, template: Path) -> ChatDefaults:
    """The stop strings of ``template``; those that are one token of the folder's tokenizer also as token ids."""
    from transformers import AutoTokenizer

    try:
        source = template.read_text()
    except OSError as err:
        raise SystemExit(f"error: cannot read {template}: {err}") from None
    vocab = AutoTokenizer.from_pretrained(model).get_vocab()
    return ChatDefaults.from_stops(template_stop_strings(source), vocab)


def _is_template_arg(argv: list[str], index: int) -> bool:
    arg = argv[index]
    return arg == "--template" or arg.startswith("--template=") or (index > 0 and argv[index - 1] == "--template")


def main() -> None:
    argv, template = server_argv(sys.argv[1:])
    model = Path(_option(argv, "--model"))
    os.environ[DEFAULTS_ENV] = chat_defaults(model, template).to_env()
    sys.argv = [SERVER_MODULE, *argv]
    runpy.run_module(SERVER_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
