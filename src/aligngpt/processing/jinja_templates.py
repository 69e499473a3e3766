"""Jinja chat templates (transformers' ``apply_chat_template``) generated from the Python templates.

Each :class:`~aligngpt.processing.templates.ChatTemplate` becomes one Jinja source: its :class:`TurnFormat` texts and
default system prompt are written into the header as string literals, followed by one shared body that lays turns
out exactly as :meth:`ChatTemplate.render` does. Answers are wrapped in ``{% generation %}`` blocks, so
``return_assistant_tokens_mask=True`` marks the same tokens as the processor's labels.

The templates read ``messages`` in transformers' form (``role``/``content``, content a string or a list of
``{"type": "image"}`` / ``{"type": "text", "text": ...}`` blocks; LLaVA's ``from``/``value`` also work) and
``add_generation_prompt``. They emit no BOS: the processor adds it, as for a plain prompt.
"""

from __future__ import annotations

import json

from aligngpt.processing.templates import (
    IMAGE_SEPARATOR,
    ROLE_ALIASES,
    TEMPLATES,
    ChatTemplate,
    get_template,
)
from aligngpt.prompts import IMAGE_TOKEN

DEFAULT_KEY = "default"  # transformers' key of the template used when no name is given

# Mirrors normalize_messages + ChatTemplate.render; the header defines every name this body reads.
_BODY = """
{%- macro text_of(content, where) -%}
{%- if content is string -%}{{ content }}
{%- else -%}
{%- for block in content -%}
{%- if block['type'] == 'image' -%}{{ image_placeholder ~ image_separator }}
{%- elif block['type'] != 'text' -%}{{ raise_exception(where ~ ': unsupported content block type ' ~ block['type']) }}
{%- endif -%}
{%- endfor -%}
{%- for block in content if block['type'] == 'text' -%}{{ block['text'] }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system=default_system, turns=[]) -%}
{%- for message in messages -%}
{%- set raw_role = message.get('role', message.get('from')) -%}
{%- set role = role_aliases.get((raw_role | string) | lower) -%}
{%- set content = message.get('content', message.get('value')) -%}
{%- if role is none -%}{{ raise_exception('turn ' ~ loop.index0 ~ ': unknown role ' ~ raw_role) }}{%- endif -%}
{%- if role == 'system' -%}
{%- set ns.system = text_of(content, 'turn ' ~ loop.index0) -%}
{%- elif content is none -%}
{%- if role == 'user' -%}{{ raise_exception('turn ' ~ loop.index0 ~ ': a user turn needs content') }}{%- endif -%}
{%- set ns.turns = ns.turns + [{'role': role, 'text': none}] -%}
{%- else -%}
{%- set ns.turns = ns.turns + [{'role': role, 'text': text_of(content, 'turn ' ~ loop.index0)}] -%}
{%- endif -%}
{%- endfor -%}
{%- set turns = ns.turns[1:] if ns.turns and ns.turns[0]['role'] == 'assistant' else ns.turns -%}
{%- if add_generation_prompt -%}{%- set turns = turns + [{'role': 'assistant', 'text': none}] -%}{%- endif -%}
{%- for turn in turns -%}
{%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
{%- if turn['role'] != expected -%}
{{ raise_exception('turn ' ~ loop.index0 ~ ': expected a ' ~ expected ~ ' turn, got ' ~ turn['role']
    ~ ' (roles must alternate)') }}
{%- endif -%}
{%- endfor -%}
{%- set system = ns.system -%}
{%- if system and system_block is not none -%}{{ system_block[0] ~ system ~ system_block[1] }}{%- endif -%}
{%- for turn in turns -%}
{%- if turn['role'] == 'user' -%}
{%- set text = turn['text'] -%}
{%- if user_keeps_only_image -%}
{%- set text = image_placeholder if image_placeholder in text else '' -%}
{%- elif loop.first and system and system_joiner is not none -%}
{%- set text = system ~ system_joiner ~ text -%}
{%- endif -%}
{{ user_block[0] ~ text ~ user_block[1] }}
{%- else -%}
{{ assistant_open }}
{%- if turn['text'] is not none -%}
{%- generation -%}{{ answer_block[0] ~ turn['text'] ~ answer_block[1] }}{%- endgeneration -%}
{{ answer_close }}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
"""


def _literal(value) -> str:
    """A Jinja literal for a string, bool, ``None``, a pair of strings or a dict of strings (JSON escapes are valid
    Jinja string escapes)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(key)}: {_literal(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)


def jinja_template(template: ChatTemplate | str) -> str:
    """The Jinja source of a template (a :class:`ChatTemplate` or its name)."""
    chat = get_template(template) if isinstance(template, str) else template
    turns = chat.turns
    constants = {
        "default_system": chat.system,
        "system_block": turns.system,
        "system_joiner": turns.system_joiner,
        "user_block": turns.user,
        "assistant_open": turns.assistant_open,
        "answer_block": turns.answer,
        "answer_close": turns.answer_close,
        "user_keeps_only_image": turns.user_keeps_only_image,
        "image_placeholder": IMAGE_TOKEN,
        "image_separator": IMAGE_SEPARATOR,
        "role_aliases": ROLE_ALIASES,
    }
    header = [f"{{#- aligngpt chat template {chat.name!r}, generated from aligngpt.processing.templates -#}}"]
    header += [f"{{%- set {name} = {_literal(value)} -%}}" for name, value in constants.items()]
    return "\n".join(header) + _BODY


def jinja_chat_templates(default: str) -> dict[str, str]:
    """Every template by name, plus ``"default"``: template ``default`` (the model's ``chat_template_name``)."""
    templates = {name: jinja_template(chat) for name, chat in TEMPLATES.items()}
    templates[DEFAULT_KEY] = jinja_template(default)
    return templates


__all__ = ["DEFAULT_KEY", "jinja_chat_templates", "jinja_template"]
