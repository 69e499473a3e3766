"""Request bodies of the OpenAI-compatible API, validated strictly, and their conversion to a prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aligngpt.inference.server.errors import APIError
from aligngpt.processing import IMAGE_TOKEN as IMAGE_PLACEHOLDER
from aligngpt.processing import ChatTemplate, Message

MAX_STOP_STRINGS = 4
MAX_TEMPERATURE = 2.0


class _Strict(BaseModel):
    """Types are checked exactly (``"1"`` is not a number); unknown fields are ignored like OpenAI's extras."""

    model_config = ConfigDict(strict=True, extra="ignore")


class ImageURL(_Strict):
    url: str
    detail: str | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int = 1

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [stop for stop in stops if stop]


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


@dataclass
class Conversation:
    """A request's messages as template input: one optional image, attached to one user turn."""

    system: str | None
    messages: list[Message]
    image_url: str | None

    def prompt(self, template: ChatTemplate) -> str:
        return template.render_text([*self.messages, Message("assistant", None)], self.system)


def to_conversation(request: ChatCompletionRequest) -> Conversation:
    """Merge consecutive same-role messages, check roles alternate and end with the user, find the image."""
    system_parts: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    image_url: str | None = None
    image_turn: int | None = None
    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        parts = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        texts: list[str] = []
        has_image = False
        for part in parts or []:
            if isinstance(part, TextPart):
                if IMAGE_PLACEHOLDER in part.text:
                    raise APIError(
                        400, f"{where}: text may not contain {IMAGE_PLACEHOLDER}; send an image_url part",
                        "invalid_value", f"{where}.content",
                    )  # fmt: skip
                texts.append(part.text)
                continue
            if message.role != "user":
                raise APIError(400, f"{where}: only user messages may hold images", "invalid_value", where)
            if image_url is not None:
                raise APIError(400, "this model takes one image per conversation", "too_many_images", where)
            image_url, has_image = part.image_url.url, True
        if message.role in ("system", "developer"):
            system_parts.extend(texts)
            continue
        if turns and turns[-1][0] == message.role:
            turns[-1][1].extend(texts)
        else:
            turns.append((message.role, texts))
        if has_image:
            image_turn = len(turns) - 1
    if turns and turns[0][0] == "assistant":
        raise APIError(400, "the conversation must start with a user message", "invalid_value", "messages")
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last message must come from the user", "invalid_value", "messages")
    messages = []
    for index, (role, texts) in enumerate(turns):
        text = "\n".join(texts)
        if index == image_turn:
            text = f"{IMAGE_PLACEHOLDER}\n{text}"
        messages.append(Message(role, text))
    system = "\n".join(system_parts) if system_parts else None
    return Conversation(system, messages, image_url)
