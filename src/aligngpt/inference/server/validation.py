"""An OpenAI chat body parsed into a typed :class:`ChatRequest`; every fault is a 4xx :class:`APIError` naming a field.

Checked here, in this order: JSON, types and ranges (:mod:`.schemas`), ``n``, the number of stop strings, the model
name, then the conversation's shape (:mod:`.conversation`). Limits that need the prompt's length are
:mod:`.budget`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from aligngpt.inference.server.config import ServerConfig
from aligngpt.inference.server.conversation import Conversation, to_conversation
from aligngpt.inference.server.errors import APIError
from aligngpt.inference.server.schemas import ChatCompletionRequest

MAX_STOP_STRINGS = 4
_BRANCH_NAMES = ("str", "int", "float", "bool", "none")


@dataclass(frozen=True)
class ChatRequest:
    """A valid chat request with the server's defaults filled in.

    ``max_tokens``: the requested completion budget (``max_completion_tokens``, else ``max_tokens``, else the
    server's default); :class:`~aligngpt.inference.server.budget.TokenBudget` checks it against the server's limit.
    """

    conversation: Conversation
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]


def validate_chat(body: bytes, config: ServerConfig) -> ChatRequest:
    """Parse and check one ``POST /v1/chat/completions`` body for the server ``config`` describes."""
    request = parse_chat_request(body)
    if request.model not in (None, "", config.model_name):
        raise APIError(
            404, f"model {request.model!r} does not exist; this server has {config.model_name!r}",
            "model_not_found", "model",
        )  # fmt: skip
    conversation = to_conversation(request)
    default_max_tokens = min(config.default_max_tokens, config.max_tokens_limit)
    return ChatRequest(
        conversation=conversation,
        stream=request.stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        max_tokens=request.max_completion_tokens or request.max_tokens or default_max_tokens,
        temperature=config.default_temperature if request.temperature is None else request.temperature,
        top_p=config.default_top_p if request.top_p is None else request.top_p,
        stop=tuple(request.stop_list()),
    )


_BRANCH_NAMES = ("str", "int", "float", "bool", "none")


def _param(location: tuple) -> str:
    """A pydantic error location as an OpenAI ``param``: ``messages[0].content[1].image_url.url``.

    Union branch names (``str``, ``list[...]``) and the tag of a tagged union are not fields and are dropped.
    """
    text, drop_tag, after_index = "", False, False
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
            after_index = True
            continue
        if part in _BRANCH_NAMES or "[" in part or part.startswith("function-"):
            drop_tag = drop_tag or "tagged-union" in part
            continue
        if drop_tag and after_index:
            drop_tag = after_index = False
            continue
        text += f".{part}" if text else part
        after_index = False
    return text


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Parse and validate a body; malformed JSON and wrong types become 400 errors naming the field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"request body is not valid JSON: {err}", "invalid_json") from err
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_json")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as err:
        first = max(err.errors(), key=lambda error: len(error["loc"]))  # the deepest union branch says most
        param = _param(first["loc"])
        raise APIError(400, f"{param or 'body'}: {first['msg']}", "invalid_value", param or None) from err
    if request.n != 1:
        raise APIError(400, "only n=1 is supported", "unsupported_value", "n")
    stops = request.stop_list()
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"at most {MAX_STOP_STRINGS} stop strings are allowed", "invalid_value", "stop")
    return request
