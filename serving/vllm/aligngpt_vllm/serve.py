"""``python -m aligngpt_vllm.serve --model FOLDER [--template NAME] [vLLM server options...]``: vLLM's OpenAI server
with aligngpt's defaults: ``--tokenizer-mode aligngpt`` and the chat template of the folder's ``chat_template_name``
(or ``--template``), from the templates shipped with the plugin. Every other option goes to vLLM unchanged."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from aligngpt_vllm.tokenizer import TOKENIZER_MODE

TEMPLATES = Path(__file__).parent / "chat_templates"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def available_templates() -> list[str]:
    return sorted(path.stem for path in TEMPLATES.glob("*.jinja"))


def _option(argv: list[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def server_argv(argv: list[str]) -> list[str]:
    """vLLM's arguments: ``argv`` without ``--template``, plus the tokenizer mode and the chat template file."""
    model = _option(argv, "--model")
    if model is None:
        raise SystemExit("error: --model FOLDER is required")
    template = _option(argv, "--template")
    rest = [arg for index, arg in enumerate(argv) if not _is_template_arg(argv, index)]
    if template is None:
        config = Path(model) / "config.json"
        try:
            template = json.loads(config.read_text()).get("chat_template_name", "vicuna_v1")
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: cannot read {config}: {err}") from None
    path = TEMPLATES / f"{template}.jinja"
    if not path.is_file():
        raise SystemExit(
            f"error: no vLLM chat template for {template!r}; available: {', '.join(available_templates())}"
        )
    extra = []
    if _option(rest, "--tokenizer-mode") is None:
        extra += ["--tokenizer-mode", TOKENIZER_MODE]
    if _option(rest, "--chat-template") is None:
        extra += ["--chat-template", str(path)]
    return rest + extra


def _is_template_arg(argv: list[str], index: int) -> bool:
    arg = argv[index]
    return arg == "--template" or arg.startswith("--template=") or (index > 0 and argv[index - 1] == "--template")


def main() -> None:
    sys.argv = [SERVER_MODULE, *server_argv(sys.argv[1:])]
    runpy.run_module(SERVER_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
