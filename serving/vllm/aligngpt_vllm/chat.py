"""The chat defaults of a model folder for vLLM's server: its chat template file and the template's stop strings.

aligngpt's processor saves its Jinja chat templates with every model folder: ``chat_template.jinja`` (the folder's
default template) and ``additional_chat_templates/<name>.jinja`` (every template by name). The plugin serves those
files as they are, so aligngpt and vLLM render from one source. A template marks each answer with a
``{% generation %}`` block that holds the answer and its stop string; the stop strings are read from there.

vLLM's server has no server-wide default for ``stop``: :class:`ChatDefaults` travels to
:mod:`aligngpt_vllm.middleware` (environment variable :data:`DEFAULTS_ENV`), which adds them to every chat request.
Nothing here imports vLLM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TEMPLATE_FILE = "chat_template.jinja"
NAMED_TEMPLATES_DIR = "additional_chat_templates"
TEMPLATE_SUFFIX = ".jinja"
DEFAULTS_ENV = "ALIGNGPT_VLLM_CHAT_DEFAULTS"
# A stand-in answer: the text a template puts after it inside the generation block is the stop string.
_PROBE_ANSWER = "\x00aligngpt-probe-answer\x00"
_PROBE_CONVERSATION = ({"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE_ANSWER})


def available_templates(folder: Path) -> list[str]:
    """The template names saved in ``folder`` (``additional_chat_templates/*.jinja``)."""
    return sorted(path.name[: -len(TEMPLATE_SUFFIX)] for path in (folder / NAMED_TEMPLATES_DIR).glob("*.jinja"))


def template_file(folder: Path, name: str | None) -> Path:
    """The chat template file of ``folder``: template ``name``, or the folder's default (``None``).

    Raises ``ValueError`` naming the missing file (folders saved before aligngpt wrote chat templates must be re-saved
    with the current aligngpt; ``--template`` names must be saved ones, aliases resolved)."""
    path = folder / DEFAULT_TEMPLATE_FILE if name is None else folder / NAMED_TEMPLATES_DIR / f"{name}{TEMPLATE_SUFFIX}"
    if path.is_file():
        return path
    names = available_templates(folder)
    if name is not None and names:
        raise ValueError(f"{path} not found: no chat template {name!r} in {folder}; saved: {', '.join(names)}")
    raise ValueError(
        f"{path} not found: {folder} holds no aligngpt chat templates (re-save it with the current aligngpt: "
        "AlignGPTProcessor.from_pretrained(folder).save_pretrained(folder))"
    )


def template_stop_strings(source: str) -> tuple[str, ...]:
    """The stop strings of a Jinja chat template: what it writes after an answer inside its ``{% generation %}``
    block (aligngpt's templates: the answer's closing text, e.g. ``</s>`` or ``<|im_end|>``); empty when none."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, spans = render_jinja_template(
        conversations=[list(_PROBE_CONVERSATION)], chat_template=source, return_assistant_tokens_mask=True
    )
    stops = []
    for start, end in spans[0]:
        block = rendered[0][start:end]
        if _PROBE_ANSWER in block:
            stop = block.split(_PROBE_ANSWER, 1)[1]
            if stop and stop not in stops:
                stops.append(stop)
    return tuple(stops)


@dataclass(frozen=True)
class ChatDefaults:
    """What every chat request gets besides its own values: ``stop`` strings and ``stop_token_ids`` (stop strings
    that are one token of the vocabulary, e.g. special tokens, which a text match cannot see once vLLM skips special
    tokens in the output)."""

    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    @staticmethod
    def from_stops(stops: tuple[str, ...], vocab: Mapping[str, int]) -> ChatDefaults:
        """Stop strings split into token ids (a vocabulary entry) and texts; every string is also kept as text."""
        return ChatDefaults(stop=tuple(stops), stop_token_ids=tuple(vocab[s] for s in stops if s in vocab))

    def to_env(self) -> str:
        return json.dumps({"stop": list(self.stop), "stop_token_ids": list(self.stop_token_ids)})

    @staticmethod
    def from_env(environ: Mapping[str, str] = os.environ) -> ChatDefaults:
        text = environ.get(DEFAULTS_ENV)
        if not text:
            return ChatDefaults()
        values = json.loads(text)
        return ChatDefaults(tuple(values.get("stop", ())), tuple(values.get("stop_token_ids", ())))

    def apply(self, request: dict) -> dict:
        """``request`` (a chat completion body) with the defaults added to its own ``stop`` / ``stop_token_ids``
        (a request's values come first; nothing is dropped)."""
        merged = dict(request)
        for name, defaults in (("stop", self.stop), ("stop_token_ids", self.stop_token_ids)):
            if not defaults:
                continue
            own = request.get(name)
            own = [] if own is None else [own] if isinstance(own, (str, int)) else list(own)
            merged[name] = own + [value for value in defaults if value not in own]
        return merged


__all__ = [
    "DEFAULTS_ENV",
    "ChatDefaults",
    "available_templates",
    "template_file",
    "template_stop_strings",
]
