"""The plugin's chat defaults for a model folder, without starting an engine (runs in the vLLM environment).

Input (``--spec``, JSON): ``{"conversations": {name: [messages in the form vLLM hands a chat template]},
"requests": [chat completion bodies]}``. Output (``--out``, JSON), per template saved in the folder:
``{"templates": {name: {"ids": {conversation: ids}, "stop": [...], "stop_token_ids": [...], "argv": [...]}},
"default": {...the same for the folder's default template...}, "rewritten": [bodies after the middleware]}``.

``ids`` are what vLLM's chat path computes: the tokenizer of ``tokenizer_mode="aligngpt"`` applying the template file
that ``aligngpt_vllm.serve`` passes to vLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path


def run_middleware(bodies: list[dict], defaults) -> list[dict]:
    """Each body through :class:`ChatDefaultsMiddleware` (in two chunks), as the wrapped app receives it."""
    from aligngpt_vllm.middleware import ChatDefaultsMiddleware

    seen: list[dict] = []

    async def app(scope, receive, send):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message["body"])
            if not message["more_body"]:
                break
        body = b"".join(chunks)
        assert dict(scope["headers"])[b"content-length"] == str(len(body)).encode()
        seen.append(json.loads(body))

    async def one(body: bytes):
        parts = [body[: len(body) // 2], body[len(body) // 2 :]]

        async def receive():
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-length", str(len(body)).encode())]}  # fmt: skip
        await ChatDefaultsMiddleware(app, defaults)(scope, receive, None)

    for body in bodies:
        asyncio.run(one(json.dumps(body).encode()))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    from aligngpt_vllm.chat import available_templates
    from aligngpt_vllm.serve import chat_defaults, server_argv
    from aligngpt_vllm.tokenizer import AlignGPTTokenizer

    spec = json.loads(args.spec.read_text())
    tokenizer = AlignGPTTokenizer.from_pretrained(str(args.model))

    def report(template: str | None) -> dict:
        argv = ["--model", str(args.model)] + ([] if template is None else ["--template", template])
        vllm_argv, path = server_argv(argv)
        source = path.read_text()
        ids = {
            name: tokenizer.apply_chat_template(
                messages, chat_template=source, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            for name, messages in spec["conversations"].items()
        }
        defaults = chat_defaults(args.model, path)
        return {"ids": ids, "stop": list(defaults.stop), "stop_token_ids": list(defaults.stop_token_ids),
                "argv": vllm_argv}  # fmt: skip

    templates = {name: report(name) for name in available_templates(args.model)}
    default = report(None)
    vicuna = chat_defaults(args.model, server_argv(["--model", str(args.model), "--template", "vicuna_v1"])[1])
    rewritten = run_middleware(spec["requests"], vicuna)
    args.out.write_text(json.dumps({"templates": templates, "default": default, "rewritten": rewritten}))


if __name__ == "__main__":
    main()
