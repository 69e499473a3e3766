"""Chat templates that render a conversation into text segments marked supervised or not.

The loss mask comes from these message boundaries (a token is supervised when its characters overlap a supervised
segment), never from re-tokenising split strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aligngpt.prompts import IMAGE_TOKEN

IMAGE_SEPARATOR = "\n"  # follows the placeholder of an image content block

ROLE_ALIASES = {
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


def content_text(content: str | Sequence[Mapping] | None, where: str = "content") -> str | None:
    """A turn's text: strings stay; transformers-style content blocks (``[{"type": "image"}, {"type": "text",
    "text": ...}]``) become one ``<image>\\n`` per image block, in front, then the text blocks joined as they are
    (the layout ``normalize_image_turns`` gives LLaVA records). Other block types raise ``ValueError``."""
    if content is None or isinstance(content, str):
        return content
    images, texts = [], []
    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "image":
            images.append(IMAGE_TOKEN + IMAGE_SEPARATOR)
        elif kind == "text":
            texts.append(block.get("text", ""))
        else:
            raise ValueError(f"{where}, block {index}: unsupported content block {block!r} (known types: image, text)")
    return "".join(images + texts)


def normalize_messages(conversation: Iterable[Mapping]) -> tuple[str | None, list[Message]]:
    """Accept LLaVA (``from``/``value``) or OpenAI (``role``/``content``) turns; returns (system, messages).

    Content may be a string or a list of content blocks (see :func:`content_text`). A leading assistant turn is
    dropped (as the official preprocessing does); roles must then alternate starting with the user, otherwise
    ``ValueError``. The last system turn gives the system prompt.
    """
    system = None
    messages: list[Message] = []
    for index, turn in enumerate(conversation):
        raw_role = turn.get("from", turn.get("role"))
        role = ROLE_ALIASES.get(str(raw_role).lower())
        if role is None:
            raise ValueError(f"turn {index}: unknown role {raw_role!r}")
        content = content_text(turn.get("value", turn.get("content")), f"turn {index}")
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
class TurnFormat:
    """The layout of one template's turns: literal texts around the system prompt, the user turns and the answers.

    Both the Python renderer (:meth:`ChatTemplate.render`) and the Jinja chat templates
    (:mod:`aligngpt.processing.jinja_templates`) are built from these fields, so the two cannot drift apart.

    Attributes:
        system: ``(before, after)`` around a non-empty system prompt rendered as its own first block; ``None``: no
            such block.
        system_joiner: when set, a non-empty system prompt is put in front of the first user turn's text, joined
            with this string (``None``: not merged).
        user: ``(before, after)`` around a user turn's text.
        assistant_open: text that opens an answer; alone it is the generation prompt.
        answer: ``(before, after)`` around an answer: the supervised part (the stop string included).
        answer_close: unsupervised text after an answer.
        user_keeps_only_image: user turns shrink to their image placeholder (``plain``: captions).
    """

    system: tuple[str, str] | None
    system_joiner: str | None
    user: tuple[str, str]
    assistant_open: str
    answer: tuple[str, str]
    answer_close: str = ""
    user_keeps_only_image: bool = False


@dataclass(frozen=True)
class ChatTemplate:
    """A template: ``render`` gives segments; ``stop_strings`` end an assistant answer."""

    name: str
    system: str
    turns: TurnFormat
    stop_strings: tuple[str, ...]

    def render(self, messages: list[Message], system: str | None = None) -> list[Segment]:
        """Segments of the conversation; a final ``Message("assistant", None)`` renders the generation prompt."""
        system = self.system if system is None else system
        turns = self.turns
        pieces: list[Segment] = []
        if system and turns.system is not None:
            pieces.append(Segment(turns.system[0] + system + turns.system[1]))
        for index, message in enumerate(messages):
            if message.role == "user":
                text = message.content
                if turns.user_keeps_only_image:
                    text = IMAGE_TOKEN if IMAGE_TOKEN in text else ""
                elif index == 0 and system and turns.system_joiner is not None:
                    text = system + turns.system_joiner + text
                pieces.append(Segment(turns.user[0] + text + turns.user[1]))
            else:
                pieces.append(Segment(turns.assistant_open))
                if message.content is not None:
                    pieces.append(Segment(turns.answer[0] + message.content + turns.answer[1], supervised=True))
                    pieces.append(Segment(turns.answer_close))
        return [piece for piece in pieces if piece.text]

    def render_text(self, messages: list[Message], system: str | None = None) -> str:
        return "".join(segment.text for segment in self.render(messages, system))

    def generation_prompt(self, user_message: str, history: list[tuple[str, str]] = ()) -> str:
        """Prompt text for a new answer after ``history`` (pairs of user, assistant texts)."""
        messages = [Message(role, text) for pair in history for role, text in zip(("user", "assistant"), pair)]
        messages += [Message("user", user_message), Message("assistant", None)]
        return self.render_text(messages)


def _two_separators(roles: tuple[str, str], sep: str, stop: str) -> TurnFormat:
    """``{system}{sep}ROLE: text{sep}ROLE: answer{stop}...``; an open turn renders as ``ROLE:``.

    The space after the assistant's ``ROLE:`` belongs to the answer: it merges into the answer's first token.
    """
    return TurnFormat(
        system=("", sep), system_joiner=None, user=(f"{roles[0]}: ", sep), assistant_open=f"{roles[1]}:",
        answer=(" ", stop),
    )  # fmt: skip


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
VICUNA_ROLES = ("USER", "ASSISTANT")

# Caption pre-training: the user turn shrinks to its image placeholder; the caption ends with a newline.
PLAIN = TurnFormat(system=None, system_joiner=None, user=("", ""), assistant_open="", answer=("", "\n"),
                   user_keeps_only_image=True)  # fmt: skip
CHATML = TurnFormat(
    system=("<|im_start|>system\n", "<|im_end|>\n"), system_joiner=None, user=("<|im_start|>user\n", "<|im_end|>\n"),
    assistant_open="<|im_start|>assistant\n", answer=("", "<|im_end|>"), answer_close="\n",
)  # fmt: skip
GEMMA = TurnFormat(
    system=None, system_joiner="\n\n", user=("<start_of_turn>user\n", "<end_of_turn>\n"),
    assistant_open="<start_of_turn>model\n", answer=("", "<end_of_turn>"), answer_close="\n",
)  # fmt: skip
MISTRAL = TurnFormat(system=None, system_joiner="\n\n", user=("[INST] ", " [/INST]"), assistant_open="",
                     answer=(" ", "</s>"))  # fmt: skip

TEMPLATES: dict[str, ChatTemplate] = {
    template.name: template
    for template in (
        ChatTemplate("plain", "", PLAIN, ("\n",)),
        ChatTemplate("vicuna_v1", VICUNA_SYSTEM, _two_separators(VICUNA_ROLES, " ", "</s>"), ("</s>",)),
        # Vicuna v1 turns without the system prompt: short sequences for small models (the toy world).
        ChatTemplate("vicuna_v1_nosys", "", _two_separators(VICUNA_ROLES, " ", "</s>"), ("</s>",)),
        ChatTemplate(
            "llama_3",
            LLAMA_3_SYSTEM,
            _two_separators(("<|start_header_id|>user", "<|start_header_id|>assistant"), " ", "<|end_of_text|>"),
            ("<|end_of_text|>",),
        ),
        ChatTemplate("chatml", "You are a helpful assistant.", CHATML, ("<|im_end|>",)),
        ChatTemplate("phi", VICUNA_SYSTEM, _two_separators(VICUNA_ROLES, " ", "<|endoftext|>"), ("<|endoftext|>",)),
        ChatTemplate("gemma", "", GEMMA, ("<end_of_turn>",)),
        ChatTemplate("mistral", "", MISTRAL, ("</s>",)),
    )
}
TEMPLATE_ALIASES = {"v1": "vicuna_v1", "qwen": "chatml", "qwen2": "chatml"}


def resolve_template_name(name: str) -> str:
    """The template name ``name`` stands for (aliases resolved); unknown names raise ``ValueError``."""
    resolved = TEMPLATE_ALIASES.get(name, name)
    if resolved not in TEMPLATES:
        raise ValueError(f"Unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return resolved


def get_template(name: str) -> ChatTemplate:
    """Look a template up by name (``v1`` is an alias of ``vicuna_v1``); unknown names raise ``ValueError``."""
    return TEMPLATES[resolve_template_name(name)]
