"""ASGI middleware for vLLM's server (``--middleware aligngpt_vllm.middleware.ChatDefaultsMiddleware``): adds the
folder template's stop strings (:class:`aligngpt_vllm.chat.ChatDefaults`, from the environment) to every
``POST .../chat/completions`` body, as aligngpt's own server does. Other requests, and bodies that are not a JSON
object (vLLM answers those with its own error), pass unchanged."""

from __future__ import annotations

import json

from aligngpt_vllm.chat import ChatDefaults

CHAT_PATH_SUFFIX = "/chat/completions"
_CONTENT_LENGTH = b"content-length"


def rewrite_body(body: bytes, defaults: ChatDefaults) -> bytes:
    """The request body with the defaults merged in; ``body`` itself when it is not a JSON object."""
    try:
        request = json.loads(body)
    except ValueError:
        return body
    if not isinstance(request, dict):
        return body
    return json.dumps(defaults.apply(request)).encode()


class ChatDefaultsMiddleware:
    """Rewrites chat completion bodies before vLLM reads them (the whole body is read first, as vLLM does)."""

    def __init__(self, app, defaults: ChatDefaults | None = None):
        self.app = app
        self.defaults = defaults if defaults is not None else ChatDefaults.from_env()

    async def __call__(self, scope, receive, send):
        is_chat = scope["type"] == "http" and scope.get("method") == "POST" and scope["path"].endswith(CHAT_PATH_SUFFIX)
        if not is_chat or not (self.defaults.stop or self.defaults.stop_token_ids):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let vLLM see it
                await self.app(scope, _replay(message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = rewrite_body(b"".join(chunks), self.defaults)
        headers = [(key, value) for key, value in scope["headers"] if key.lower() != _CONTENT_LENGTH]
        scope = {**scope, "headers": [*headers, (_CONTENT_LENGTH, str(len(body)).encode())]}
        await self.app(scope, _replay({"type": "http.request", "body": body, "more_body": False}, receive), send)


def _replay(first: dict, receive):
    """A ``receive`` that returns ``first`` once, then the client's own messages."""
    pending = [first]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed
