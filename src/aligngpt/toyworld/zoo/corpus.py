"""Text of the toy world for the tokenizer and the language model.

Conversations are rendered in the Vicuna-v1 template (docs/toyworld.md) with the ``<image>`` placeholder removed (the
real model splices image features there), so the pre-trained LM already knows the chat format; stage-1 style
``caption + "\\n"`` lines are mixed in.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from aligngpt.toyworld.instructions import (
    CAPTION_PROMPTS,
    PRETRAIN_PROMPTS,
    QA,
    SHORT_ANSWER_SUFFIX,
    TEXT_ONLY_QA,
    InstructionConfig,
    make_conversation,
    make_text_only,
    plural,
)
from aligngpt.toyworld.samples import IMAGE_TOKEN
from aligngpt.toyworld.text import clean_caption
from aligngpt.toyworld.world import COLOURS, POSITION_NAMES, POSITION_PHRASES, SHAPES, WorldConfig, sample_scene
from aligngpt.toyworld.world import stream_rng as _stream_rng

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
USER_ROLE = "USER"
ASSISTANT_ROLE = "ASSISTANT"
EOS_TEXT = "</s>"
PLAIN_SEPARATOR = "\n"
TEMPLATE_STRINGS = (
    VICUNA_SYSTEM,
    f"{USER_ROLE}:",
    f"{ASSISTANT_ROLE}:",
    EOS_TEXT,
    f" {USER_ROLE}: ",
    f" {ASSISTANT_ROLE}: ",
    f" {ASSISTANT_ROLE}:",
)
# Share of language-model texts that are stage-1 style "caption\n" lines (the rest are chats).
PLAIN_CAPTION_SHARE = 0.25


def vicuna_v1(turns: list[QA] | tuple[QA, ...], with_image: bool) -> str:
    """Render turns like Vicuna v1: ``"{system} USER: q1 ASSISTANT: a1</s>USER: q2 ..."``.

    The image placeholder is dropped, keeping the newline after it: ``"USER: \\nq1"``.
    """
    parts = [VICUNA_SYSTEM, " "]
    for number, qa in enumerate(turns):
        question = f"{IMAGE_TOKEN}\n{qa.question}" if with_image and number == 0 else qa.question
        parts.append(f"{USER_ROLE}: {question.replace(IMAGE_TOKEN, '')} {ASSISTANT_ROLE}: {qa.answer}{EOS_TEXT}")
    return "".join(parts)


def vocabulary_strings() -> list[str]:
    """Every fixed phrase of the world, so the tokenizer sees each at least once."""
    words = [*COLOURS, *SHAPES, *(plural(s) for s in SHAPES), *(str(n) for n in range(10)), "yes", "no"]
    words += [n for row in POSITION_NAMES for n in row] + [p for row in POSITION_PHRASES for p in row]
    prompts = [*CAPTION_PROMPTS, *PRETRAIN_PROMPTS, SHORT_ANSWER_SUFFIX]
    text_only = [s for pair in TEXT_ONLY_QA for s in pair]
    return [*TEMPLATE_STRINGS, *words, *(w.capitalize() for w in words), *prompts, *text_only]


def lm_texts(
    seed: int, stream: str, count: int, world: WorldConfig, instructions: InstructionConfig | None = None
) -> Iterator[str]:
    """``count`` language-model training texts: Vicuna-v1 chats and clean caption lines (no noise)."""
    instructions = instructions or InstructionConfig()
    for index in range(count):
        rng: np.random.Generator = _stream_rng(seed, stream, index)
        kind = rng.random()
        if kind < instructions.text_only_fraction:
            yield vicuna_v1([make_text_only(rng)], with_image=False)
            continue
        scene = sample_scene(rng, world)
        if kind < instructions.text_only_fraction + PLAIN_CAPTION_SHARE:
            yield clean_caption(scene) + PLAIN_SEPARATOR  # stage-1 style line
        else:
            yield vicuna_v1(make_conversation(scene, rng, instructions), with_image=True)


def tokenizer_corpus(seed: int, count: int, world: WorldConfig) -> list[str]:
    """Texts to train the tokenizer on: fixed phrases plus sampled chats and captions."""
    return [*vocabulary_strings(), *lm_texts(seed, "zoo-tokenizer", count, world)]
