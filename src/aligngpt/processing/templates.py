"""Chat templates that render a conversation into text segments marked supervised or not.

The loss mask comes from these message boundaries (a token is supervised when its characters overlap a supervised
segment), never from re-tokenising split strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

IMAGE_PLACEHOLDER = "<image>"

_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered conversation; ``supervised`` pieces are the assistant's answers (and their stop)."""

    text: str
    supervised: bool = False


@dataclass(frozen=True)
class Message:
    role: str  # "user" or "assistant"
    content: str | None  # None: an open assistant turn (generation prompt)


def normalize_messages(conversation: Iterable[Mapping]) -> tuple[str | None, list[Message]]:
    """Accept LLaVA (``from``/``value``) or OpenAI (``role``/``content``) turns; returns (system, messages).

    A leading assistant turn is dropped (as the official preprocessing does); roles must then alternate starting
    with the user, otherwise ``ValueError``.
    """
    system = None
    messages: list[Message] = []
    for index, turn in enumerate(conversation):
        raw_role = turn.get("from", turn.get("role"))
        role = _ROLE_ALIASES.get(str(raw_role).lower())
        if role is None:
            raise ValueError(f"turn {index}: unknown role {raw_role!r}")
        content = turn.get("value", turn.get("content"))
        if role == "system":
            system = content
            continue
        messages.append(Message(role, content))
    if messages and messages[0].role == "assistant":
        messages = messages[1:]
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.role != expected:
            raise ValueError(f"turn {index}: expected a {expected} turn, got {message.role} (roles must alternate)")
    return system, messages


@dataclass(frozen=True)
class ChatTemplate:
    """A template: ``render`` gives segments; ``stop_strings`` end an assistant answer."""

    name: str
    system: str
    render_fn: Callable[[ChatTemplate, str, list[Message]], list[Segment]]
    stop_strings: tuple[str, ...]

    def render(self, messages: list[Message], system: str | None = None) -> list[Segment]:
        """Segments of the conversation; a final ``Message("assistant", None)`` renders the generation prompt."""
        return self.render_fn(self, self.system if system is None else system, messages)

    def render_text(self, messages: list[Message], system: str | None = None) -> str:
        return "".join(segment.text for segment in self.render(messages, system))

    def generation_prompt(self, user_message: str, history: list[tuple[str, str]] = ()) -> str:
        """Prompt text for a new answer after ``history`` (pairs of user, assistant texts)."""
        messages = [Message(role, text) for pair in history for role, text in zip(("user", "assistant"), pair)]
        messages += [Message("user", user_message), Message("assistant", None)]
        return self.render_text(messages)


def _render_two_separators(
    template: ChatTemplate, system: str, messages: list[Message], roles: tuple[str, str], sep: str, sep2: str
) -> list[Segment]:
    """``{system}{sep}ROLE: text{sep}ROLE: answer{sep2}...``; an open turn renders as ``ROLE:``."""
    segments = [Segment(system + sep)] if system else []
    for message in messages:
        role = roles[0] if message.role == "user" else roles[1]
        if message.content is None:
            segments.append(Segment(f"{role}:"))
        elif message.role == "user":
            segments.append(Segment(f"{role}: {message.content}{sep}"))
        else:
            # The space after "ROLE:" belongs to the answer: it merges into the answer's first token.
            segments += [Segment(f"{role}:"), Segment(f" {message.content}{sep2}", supervised=True)]
    return segments


def _vicuna_v1(template: ChatTemplate, system: str, messages: list[Message]) -> list[Segment]:
    return _render_two_separators(template, system, messages, ("USER", "ASSISTANT"), " ", "</s>")


def _phi(template: ChatTemplate, system: str, messages: list[Message]) -> list[Segment]:
    return _render_two_separators(template, system, messages, ("USER", "ASSISTANT"), " ", "<|endoftext|>")


def _llama_3(template: ChatTemplate, system: str, messages: list[Message]) -> list[Segment]:
    roles = ("<|start_header_id|>user", "<|start_header_id|>assistant")
    return _render_two_separators(template, system, messages, roles, " ", "<|end_of_text|>")


def _plain(template: ChatTemplate, system: str, messages: list[Message]) -> list[Segment]:
    """Caption pre-training: the user turn shrinks to its image placeholder; the caption ends with a newline."""
    segments: list[Segment] = []
    for message in messages:
        if message.role == "user":
            segments.append(Segment(IMAGE_PLACEHOLDER if IMAGE_PLACEHOLDER in message.content else ""))
        elif message.content is not None:
            segments.append(Segment(message.content + "\n", supervised=True))
    return segments


def _chatml(template: ChatTemplate, system: str, messages: list[Message]) -> list[Segment]:
    segments = [Segment(f"<|im_start|>system\n{system}<|im_end|>\n")] if system else []
    for message in messages:
        if message.role == "user":
            segments.append(Segment(f"<|im_start|>user\n{message.content}<|im_end|>\n"))
        elif message.content is None:
            segments.append(Segment("<|im_start|>assistant\n"))
        else:
            segments += [
                Segment("<|im_start|>assistant\n"),
                Segment(f"{message.content}<|im_end|>", True),
                Segment("\n"),
            ]
    return segments


def _gemma(template: ChatTemplate, system: str, messages: list[Message]) -> list[Segment]:
    segments: list[Segment] = []
    for index, message in enumerate(messages):
        if message.role == "user":
            content = f"{system}\n\n{message.content}" if system and index == 0 else message.content
            segments.append(Segment(f"<start_of_turn>user\n{content}<end_of_turn>\n"))
        elif message.content is None:
            segments.append(Segment("<start_of_turn>model\n"))
        else:
            segments += [
                Segment("<start_of_turn>model\n"),
                Segment(f"{message.content}<end_of_turn>", True),
                Segment("\n"),
            ]
    return segments


def _mistral(template: ChatTemplate, system: str, messages: list[Message]) -> list[Segment]:
    segments: list[Segment] = []
    for index, message in enumerate(messages):
        if message.role == "user":
            content = f"{system}\n\n{message.content}" if system and index == 0 else message.content
            segments.append(Segment(f"[INST] {content} [/INST]"))
        elif message.content is not None:
            segments.append(Segment(f" {message.content}</s>", supervised=True))
    return segments


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

TEMPLATES: dict[str, ChatTemplate] = {
    template.name: template
    for template in (
        ChatTemplate("plain", "", _plain, ("\n",)),
        ChatTemplate("vicuna_v1", VICUNA_SYSTEM, _vicuna_v1, ("</s>",)),
        # Vicuna v1 turns without the system prompt: short sequences for small models (the toy world).
        ChatTemplate("vicuna_v1_nosys", "", _vicuna_v1, ("</s>",)),
        ChatTemplate("llama_3", LLAMA_3_SYSTEM, _llama_3, ("<|end_of_text|>",)),
        ChatTemplate("chatml", "You are a helpful assistant.", _chatml, ("<|im_end|>",)),
        ChatTemplate("phi", VICUNA_SYSTEM, _phi, ("<|endoftext|>",)),
        ChatTemplate("gemma", "", _gemma, ("<end_of_turn>",)),
        ChatTemplate("mistral", "", _mistral, ("</s>",)),
    )
}
TEMPLATE_ALIASES = {"v1": "vicuna_v1", "qwen": "chatml", "qwen2": "chatml"}


def get_template(name: str) -> ChatTemplate:
    """Look a template up by name (``v1`` is an alias of ``vicuna_v1``); unknown names raise ``ValueError``."""
    resolved = TEMPLATE_ALIASES.get(name, name)
    if resolved not in TEMPLATES:
        raise ValueError(f"Unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[resolved]
