"""A request's messages as chat-template input: roles merged and checked, the one image attached to its user turn."""

from __future__ import annotations

from dataclasses import dataclass

from aligngpt.inference.server.errors import APIError
from aligngpt.inference.server.schemas import ChatCompletionRequest, TextPart
from aligngpt.processing import IMAGE_TOKEN, ChatTemplate, Message


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
                if IMAGE_TOKEN in part.text:
                    raise APIError(
                        400, f"{where}: text may not contain {IMAGE_TOKEN}; send an image_url part",
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
            text = f"{IMAGE_TOKEN}\n{text}"
        messages.append(Message(role, text))
    system = "\n".join(system_parts) if system_parts else None
    return Conversation(system, messages, image_url)
