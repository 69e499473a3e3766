"""Instruction (question/answer) data about a scene, with optional, controllable answer noise.

Task types (``TASKS``): ``caption`` (detailed caption), ``count_all``, ``count_shape``, ``colour``, ``shape``,
``position`` and ``pope`` (yes/no existence questions; negatives are random types, absent partners of present
objects ("popular") or attribute swaps of present objects ("adversarial")).

Noise knobs (see TOYWORLD_NOTES): ``noise_fraction`` corrupts that share of caption answers with the stage-1
noise model and always adds an absent partner; ``noisy_tasks`` names task types whose answers are *always*
corrupted, which makes the noise predictable from the prompt; ``loose_prompts`` names caption phrasings whose answers
(a share ``loose_fraction`` of them) are drawn like the stage-1 "partial" captions, so that a lower alignment level
is the right choice for exactly those prompts. A loose turn stands alone in its conversation: the gate chooses one
alignment token per sample, so that token then serves exactly the loose prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aligngpt.prompts import SHORT_ANSWER_INSTRUCTION
from aligngpt.toyworld.text import (
    PretrainNoiseConfig,
    article,
    caption_from_objects,
    clean_caption,
    corrupt_mentions,
)
from aligngpt.toyworld.world import (
    ALL_TYPES,
    COLOURS,
    GRID_SIZE,
    POSITION_NAMES,
    SHAPES,
    ObjectType,
    Scene,
    SceneObject,
    partner_of,
)

TASKS = ("caption", "count_all", "count_shape", "colour", "shape", "position", "pope")
POPE_SPLITS = ("random", "popular", "adversarial")
SHORT_ANSWER_SUFFIX = "\n" + SHORT_ANSWER_INSTRUCTION
CAPTION_PROMPTS = (
    "Describe the image in detail.",
    "Describe every object in the image and where it is.",
    "What is in this image? Describe all objects.",
)
EVAL_CAPTION_PROMPT = CAPTION_PROMPTS[0]
PRETRAIN_PROMPTS = (
    "Describe the image briefly.",
    "Write a short caption for the image.",
    "What does the image show?",
    "Give a brief description of the picture.",
)
# Text-only samples: questions about the world that need no image.
TEXT_ONLY_QA = (
    ("Which colors can objects in this world have?", "red, green, blue, yellow, purple and orange."),
    ("Which shapes can objects in this world have?", "circle, square, triangle and cross."),
    ("How many cells does the grid of an image have?", f"{GRID_SIZE * GRID_SIZE}"),
    ("How many objects can an image contain?", "between one and four."),
)
CORRUPTED_CAPTION_PROB_RANGE = (0.2, 0.9)
LOOSE_CATEGORY = "loose"  # category of a caption turn answered loosely (``loose_prompts``)
FAIR_COIN = 0.5  # e.g. count noise goes up or down, POPE positive or negative, equally often


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


@dataclass(frozen=True)
class QA:
    """One question/answer turn. ``noisy`` marks a deliberately wrong answer."""

    task: str
    question: str
    answer: str
    noisy: bool = False
    category: str = ""  # POPE split for ``pope`` questions, else the task name


@dataclass(frozen=True)
class InstructionConfig:
    """Mixture and noise settings of the instruction-tuning data."""

    task_weights: dict[str, float] = field(
        default_factory=lambda: {
            "caption": 0.2,
            "count_all": 0.1,
            "count_shape": 0.1,
            "colour": 0.12,
            "shape": 0.12,
            "position": 0.12,
            "pope": 0.24,
        }
    )
    max_turns: int = 3
    noise_fraction: float = 0.0  # share of caption answers corrupted (an absent partner always added)
    noisy_tasks: tuple[str, ...] = ()  # task types whose answers are always corrupted
    text_only_fraction: float = 0.02
    # Caption phrasings (members of CAPTION_PROMPTS) whose answers are loosely aligned: that share of them is drawn
    # like a stage-1 "partial" caption (each mention corrupted with p ~ U(corrupt_prob_min, corrupt_prob_max)).
    loose_prompts: tuple[str, ...] = ()
    loose_fraction: float = 1.0
    loose_noise: PretrainNoiseConfig = field(default_factory=PretrainNoiseConfig)

    def __post_init__(self) -> None:
        unknown = [t for t in (*self.task_weights, *self.noisy_tasks) if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task types {unknown}; expected some of {TASKS}")
        not_prompts = [p for p in self.loose_prompts if p not in CAPTION_PROMPTS]
        if not_prompts:
            raise ValueError(f"loose_prompts {not_prompts} are not caption phrasings; expected some of "
                             f"{CAPTION_PROMPTS}")  # fmt: skip
        if EVAL_CAPTION_PROMPT in self.loose_prompts:
            raise ValueError(f"the evaluation's caption phrasing {EVAL_CAPTION_PROMPT!r} cannot be a loose prompt")
        if any(w < 0 for w in self.task_weights.values()) or sum(self.task_weights.values()) <= 0:
            raise ValueError(f"task_weights must be >= 0 with a positive sum, got {self.task_weights}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        for name in ("noise_fraction", "text_only_fraction", "loose_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


def _pick(rng: np.random.Generator, items: list | tuple):
    return items[int(rng.integers(len(items)))]


def _other(values: tuple[str, ...], current: str, rng: np.random.Generator) -> str:
    return _pick(rng, [v for v in values if v != current])


def _short(question: str) -> str:
    return question + SHORT_ANSWER_SUFFIX


def pope_negative(scene: Scene, split: str, rng: np.random.Generator) -> ObjectType | None:
    """An absent type for a POPE question of ``split``, or None if the scene offers none."""
    present = scene.types
    if split == "random":
        candidates = [t for t in ALL_TYPES if t not in present]
    elif split == "popular":
        candidates = sorted({partner_of(t) for t in present} - present)
    elif split == "adversarial":
        swaps = {ObjectType(c, t.shape) for t in present for c in COLOURS}
        swaps |= {ObjectType(t.colour, s) for t in present for s in SHAPES}
        candidates = sorted(swaps - present)
    else:
        raise ValueError(f"unknown POPE split {split!r}; expected one of {POPE_SPLITS}")
    return _pick(rng, candidates) if candidates else None


def pope_question(obj_type: ObjectType) -> str:
    return _short(f"Is there {article(obj_type.colour)} {obj_type.name} in the image?")


def loose_caption(scene: Scene, rng: np.random.Generator, noise: PretrainNoiseConfig) -> str:
    """A caption of ``scene`` drawn like a stage-1 "partial" caption (``noise``'s per-mention corruption range)."""
    prob = float(rng.uniform(noise.corrupt_prob_min, noise.corrupt_prob_max))
    return caption_from_objects(corrupt_mentions(scene, prob, rng))


def make_qa(
    task: str, scene: Scene, rng: np.random.Generator, noisy: bool = False, config: InstructionConfig | None = None
) -> QA:
    """A question of type ``task`` about ``scene``; with ``noisy`` the answer is deliberately wrong.

    With ``config`` naming ``loose_prompts``, a caption asked in a loose phrasing gets (with probability
    ``loose_fraction``) a stage-1-style partial caption; its ``category`` is then ``"loose"``.
    """
    obj: SceneObject = _pick(rng, scene.objects)
    if task == "caption":
        question = _pick(rng, CAPTION_PROMPTS)
        if config is not None and question in config.loose_prompts and rng.random() < config.loose_fraction:
            return QA(task, question, loose_caption(scene, rng, config.loose_noise), True, LOOSE_CATEGORY)
        if noisy:
            prob = float(rng.uniform(*CORRUPTED_CAPTION_PROB_RANGE))
            answer = caption_from_objects(corrupt_mentions(scene, prob, rng, force_partner=True))
        else:
            answer = clean_caption(scene)
        return QA(task, question, answer, noisy, task)
    if task in ("count_all", "count_shape"):
        if task == "count_all":
            count = len(scene.objects)
            question = _short("How many objects are there in the image?")
        else:
            shape = _pick(rng, SHAPES)
            count = sum(o.type.shape == shape for o in scene.objects)
            question = _short(f"How many {plural(shape)} are there in the image?")
        if noisy:  # off by one, never negative
            count = count + 1 if count == 0 or rng.random() < FAIR_COIN else count - 1
        return QA(task, question, str(count), noisy, task)
    if task == "colour":
        answer = _other(COLOURS, obj.type.colour, rng) if noisy else obj.type.colour
        return QA(task, _short(f"What color is the object {obj.position_phrase}?"), answer, noisy, task)
    if task == "shape":
        unique_colour = sum(o.type.colour == obj.type.colour for o in scene.objects) == 1
        ref = (
            f"the {obj.type.colour} object"
            if unique_colour and rng.random() < FAIR_COIN
            else (f"the object {obj.position_phrase}")
        )
        answer = _other(SHAPES, obj.type.shape, rng) if noisy else obj.type.shape
        return QA(task, _short(f"What shape is {ref}?"), answer, noisy, task)
    if task == "position":
        names = tuple(n for row in POSITION_NAMES for n in row)
        answer = _other(names, obj.position, rng) if noisy else obj.position
        return QA(task, _short(f"Where is the {obj.type.name}?"), answer, noisy, task)
    if task == "pope":
        split = _pick(rng, POPE_SPLITS)
        negative = pope_negative(scene, split, rng)
        positive = negative is None or rng.random() < FAIR_COIN
        truth = "yes" if positive else "no"
        answer = {"yes": "no", "no": "yes"}[truth] if noisy else truth
        asked = obj.type if positive else negative
        return QA(task, pope_question(asked), answer, noisy, split)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def make_conversation(scene: Scene, rng: np.random.Generator, config: InstructionConfig) -> list[QA]:
    """1..``max_turns`` question/answer turns about ``scene`` with distinct questions."""
    tasks = list(config.task_weights)
    weights = np.asarray([config.task_weights[t] for t in tasks], dtype=float)
    n_turns = int(rng.integers(1, config.max_turns + 1))
    turns: list[QA] = []
    asked: set[str] = set()
    for _ in range(n_turns):
        task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))]
        noise_draw = rng.random()
        noisy = task in config.noisy_tasks or (task == "caption" and noise_draw < config.noise_fraction)
        qa = make_qa(task, scene, rng, noisy, config)
        if qa.category == LOOSE_CATEGORY:
            if not turns:  # a loose turn stands alone, so the sample's one alignment token serves only it
                return [qa]
            continue
        if qa.question not in asked:
            asked.add(qa.question)
            turns.append(qa)
    return turns


def make_text_only(rng: np.random.Generator) -> QA:
    question, answer = _pick(rng, TEXT_ONLY_QA)
    return QA("text_only", question, answer, False, "text_only")
