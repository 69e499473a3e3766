"""Captions of scenes: clean captions, the caption parser, and noisy pre-training captions.

A caption is a list of *mentions* in reading order, each "a <colour> <shape> <position phrase>", e.g.
"A red circle at the top left and a blue cross in the center." The parser turns any text back into mentions,
so clean captions round-trip exactly and generated captions can be scored.

Noisy pre-training captions come in three kinds (fractions are parameters):
``clean`` (the clean caption), ``partial`` (each mention corrupted with probability p ~ U(lo, hi): wrong colour,
shape or position, or an absent partner added next to it; at least one corruption), ``unrelated`` (the clean
caption of another random scene). Every caption carries ``true_alignment``: the F1 between the mentioned
(type, cell) set and the scene's objects (1.0 for clean captions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from aligngpt.toyworld.world import (
    COLOURS,
    GRID_SIZE,
    POSITION_NAMES,
    SHAPES,
    ObjectType,
    Scene,
    SceneObject,
    WorldConfig,
    free_cells,
    partner_of,
    sample_scene,
)

NOISE_KINDS = ("clean", "partial", "unrelated")
CORRUPTIONS = ("colour", "shape", "position", "partner")
MAX_RESAMPLE = 100  # attempts to draw an unrelated scene that differs from the described one

_POSITION_BY_NAME = {name: (r, c) for r, row in enumerate(POSITION_NAMES) for c, name in enumerate(row)}
# Longest names first so "top left" wins over "top".
_POSITION_ALTERNATIVES = "|".join(sorted(_POSITION_BY_NAME, key=len, reverse=True))
_MENTION_RE = re.compile(
    rf"\b(?P<colour>{'|'.join(COLOURS)})\s+(?P<shape>{'|'.join(SHAPES)})(?:e?s)?\b"
    rf"(?:\s+(?:at|on|in)\s+the\s+(?P<position>{_POSITION_ALTERNATIVES})\b)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Mention:
    """An object mentioned in text; ``cell`` is None when the text gives no position."""

    type: ObjectType
    cell: tuple[int, int] | None

    @property
    def position(self) -> str | None:
        return None if self.cell is None else POSITION_NAMES[self.cell[0]][self.cell[1]]


def position_cell(name: str) -> tuple[int, int]:
    """Position name ("top left") -> grid cell (row, col)."""
    try:
        return _POSITION_BY_NAME[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown position {name!r}; expected one of {sorted(_POSITION_BY_NAME)}") from None


def article(word: str) -> str:
    """The indefinite article for ``word`` ("an orange", "a red")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption_from_objects(objects: list[SceneObject] | tuple[SceneObject, ...]) -> str:
    """Render mentions as a caption sentence, e.g. "A red circle at the top left and a blue cross on the right."."""
    if not objects:
        raise ValueError("a caption needs at least one object")
    phrases = [f"{article(o.type.colour)} {o.type.colour} {o.type.shape} {o.position_phrase}" for o in objects]
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return body[0].upper() + body[1:] + "."


def clean_caption(scene: Scene) -> str:
    """The faithful caption of ``scene`` (objects in reading order)."""
    return caption_from_objects(scene.objects)


def parse_caption(text: str) -> list[Mention]:
    """All object mentions in ``text``, in order of appearance (case-insensitive, plurals accepted)."""
    mentions = []
    for match in _MENTION_RE.finditer(text):
        obj_type = ObjectType(match["colour"].lower(), match["shape"].lower())
        position = match["position"]
        mentions.append(Mention(obj_type, None if position is None else position_cell(position)))
    return mentions


def alignment_f1(mentioned: list[SceneObject], scene: Scene) -> float:
    """F1 between mentioned (type, cell) items and the scene's objects; duplicate mentions count once."""
    said = {(o.type, o.row, o.col) for o in mentioned}
    truth = {(o.type, o.row, o.col) for o in scene.objects}
    hits = len(said & truth)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(said), hits / len(truth)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class PretrainNoiseConfig:
    """Mixture of pre-training caption kinds and the per-mention corruption probability range."""

    clean_fraction: float = 0.25
    partial_fraction: float = 0.5
    unrelated_fraction: float = 0.25
    corrupt_prob_min: float = 0.2
    corrupt_prob_max: float = 0.9

    def __post_init__(self) -> None:
        fractions = (self.clean_fraction, self.partial_fraction, self.unrelated_fraction)
        if any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
            raise ValueError(f"caption kind fractions must be >= 0 and sum to 1, got {fractions}")
        if not 0.0 <= self.corrupt_prob_min <= self.corrupt_prob_max <= 1.0:
            raise ValueError(
                f"need 0 <= corrupt_prob_min <= corrupt_prob_max <= 1, got "
                f"{self.corrupt_prob_min}, {self.corrupt_prob_max}"
            )

    @property
    def fractions(self) -> tuple[float, float, float]:
        return (self.clean_fraction, self.partial_fraction, self.unrelated_fraction)


@dataclass(frozen=True)
class NoisyCaption:
    text: str
    kind: str  # one of NOISE_KINDS
    true_alignment: float
    mentions: tuple[SceneObject, ...]


def _other(values: tuple[str, ...], current: str, rng: np.random.Generator) -> str:
    choices = [v for v in values if v != current]
    return choices[int(rng.integers(len(choices)))]


def _corrupt_one(
    obj: SceneObject, kind: str, scene: Scene, taken: set[tuple[int, int]], rng: np.random.Generator
) -> list[SceneObject]:
    """Mentions replacing ``obj`` after corruption ``kind`` (the partner kind keeps ``obj`` and adds one)."""
    if kind == "partner":
        partner = partner_of(obj.type)
        cells = [c for c in free_cells(scene) if c not in taken]
        if partner not in scene.types and cells:
            r, c = cells[int(rng.integers(len(cells)))]
            taken.add((r, c))
            return [obj, SceneObject(partner, r, c)]
        kind = "colour"  # partner present or no room: fall back to a colour error
    if kind == "colour":
        return [SceneObject(ObjectType(_other(COLOURS, obj.type.colour, rng), obj.type.shape), obj.row, obj.col)]
    if kind == "shape":
        return [SceneObject(ObjectType(obj.type.colour, _other(SHAPES, obj.type.shape, rng)), obj.row, obj.col)]
    if kind == "position":
        cells = [(r, c) for r in range(GRID_SIZE) for c in range(GRID_SIZE) if (r, c) != (obj.row, obj.col)]
        r, c = cells[int(rng.integers(len(cells)))]
        return [SceneObject(obj.type, r, c)]
    raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")


def corrupt_mentions(
    scene: Scene, prob: float, rng: np.random.Generator, force_partner: bool = False
) -> list[SceneObject]:
    """Mentions of ``scene`` with each one corrupted with probability ``prob`` (at least one corrupted).

    With ``force_partner`` an absent partner of some object is always added as well (when one exists).
    """
    objects = list(scene.objects)
    flips = rng.random(len(objects)) < prob
    kinds = [CORRUPTIONS[int(k)] for k in rng.integers(len(CORRUPTIONS), size=len(objects))]
    if not flips.any():
        flips[int(rng.integers(len(objects)))] = True
    taken = {(o.row, o.col) for o in objects}
    mentions: list[SceneObject] = []
    for obj, flip, kind in zip(objects, flips, kinds):
        mentions.extend(_corrupt_one(obj, kind, scene, taken, rng) if flip else [obj])
    if force_partner and not hallucinated_partners(mentions, scene):
        lonely = [o for o in objects if partner_of(o.type) not in scene.types]
        if lonely:
            extra = _corrupt_one(lonely[int(rng.integers(len(lonely)))], "partner", scene, taken, rng)
            mentions.extend(extra[1:])
    return sorted(mentions, key=lambda o: (o.row, o.col))


def hallucinated_partners(mentions: list[SceneObject] | list[Mention], scene: Scene) -> list[ObjectType]:
    """Mentioned types that are absent from ``scene`` but are the partner of a present type."""
    partners = {partner_of(t) for t in scene.types}
    return [m.type for m in mentions if m.type not in scene.types and m.type in partners]


def noisy_caption(
    scene: Scene, rng: np.random.Generator, world: WorldConfig, noise: PretrainNoiseConfig
) -> NoisyCaption:
    """Draw a pre-training caption of ``scene`` (kind drawn from ``noise.fractions``)."""
    kind = NOISE_KINDS[int(rng.choice(len(NOISE_KINDS), p=np.asarray(noise.fractions)))]
    if kind == "clean":
        mentions = list(scene.objects)
    elif kind == "partial":
        prob = float(rng.uniform(noise.corrupt_prob_min, noise.corrupt_prob_max))
        mentions = corrupt_mentions(scene, prob, rng)
    else:
        for _ in range(MAX_RESAMPLE):
            other = sample_scene(rng, world)
            if other != scene:
                break
        mentions = list(other.objects)
    return NoisyCaption(caption_from_objects(mentions), kind, alignment_f1(mentions, scene), tuple(mentions))
