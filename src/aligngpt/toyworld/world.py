"""The toy world: object types, grid positions, partner pairs and scene sampling.

A scene is 1-4 objects on a 3x3 grid. Each object has a type (colour, shape) and a cell; the types in a scene
are distinct, and so are the cells. Some types have a fixed *partner* type that is added to the scene with
probability ``partner_prob`` whenever the type is placed, so a model that learns the co-occurrence statistics
hallucinates partners in a systematic way (the "popular" POPE split asks about exactly those).

Randomness: every sample is drawn from its own generator ``stream_rng(seed, stream, index)``, so sample ``i`` of
a split can be regenerated alone and the splits never share random draws.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
GRID_SIZE = 3

# Cell (row, col) -> short name, used as a VQA answer ("Where is the red circle?" -> "top left").
POSITION_NAMES: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
# Cell -> the phrase that follows an object in a caption ("a red circle at the top left").
POSITION_PHRASES: tuple[tuple[str, ...], ...] = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the center", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)

# Partner of (colour c, shape s) is (c + 3, s + 2) (mod sizes): an involution without fixed points, so the 24
# types fall into 12 disjoint pairs that always differ in both colour and shape.
_PARTNER_COLOUR_STEP = len(COLOURS) // 2
_PARTNER_SHAPE_STEP = len(SHAPES) // 2


@dataclass(frozen=True, order=True)
class ObjectType:
    """A colour + shape combination, e.g. ``ObjectType("red", "circle")``."""

    colour: str
    shape: str

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {COLOURS}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


ALL_TYPES: tuple[ObjectType, ...] = tuple(ObjectType(c, s) for c in COLOURS for s in SHAPES)


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object of a scene: its type and grid cell (row, col), each in ``range(GRID_SIZE)``."""

    type: ObjectType
    row: int
    col: int

    @property
    def position(self) -> str:
        return POSITION_NAMES[self.row][self.col]

    @property
    def position_phrase(self) -> str:
        return POSITION_PHRASES[self.row][self.col]

    def to_dict(self) -> dict[str, object]:
        return {"colour": self.type.colour, "shape": self.type.shape, "row": self.row, "col": self.col}

    @staticmethod
    def from_dict(record: dict[str, object]) -> SceneObject:
        return SceneObject(
            ObjectType(str(record["colour"]), str(record["shape"])), int(record["row"]), int(record["col"])
        )


@dataclass(frozen=True)
class Scene:
    """A scene: objects sorted in reading order (row-major), types and cells distinct."""

    objects: tuple[SceneObject, ...]

    @property
    def types(self) -> frozenset[ObjectType]:
        return frozenset(o.type for o in self.objects)

    def to_list(self) -> list[dict[str, object]]:
        return [o.to_dict() for o in self.objects]


@dataclass(frozen=True)
class WorldConfig:
    """Settings of the world itself (shared by the dataset and the model zoo)."""

    image_size: int = 36
    min_objects: int = 1
    max_objects: int = 4
    partner_prob: float = 0.5
    # Types that have a partner; by default all 24 (12 pairs). A type listed here brings its partner along.
    partnered_types: tuple[str, ...] = field(default_factory=lambda: tuple(t.name for t in ALL_TYPES))

    def __post_init__(self) -> None:
        cells = GRID_SIZE * GRID_SIZE
        if not 1 <= self.min_objects <= self.max_objects <= cells:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {cells}, got {self.min_objects}, {self.max_objects}"
            )
        if not 0.0 <= self.partner_prob <= 1.0:
            raise ValueError(f"partner_prob must be in [0, 1], got {self.partner_prob}")
        if self.image_size < GRID_SIZE * 4:
            raise ValueError(f"image_size {self.image_size} is too small for a {GRID_SIZE}x{GRID_SIZE} grid")
        known = {t.name for t in ALL_TYPES}
        unknown = [n for n in self.partnered_types if n not in known]
        if unknown:
            raise ValueError(f"partnered_types holds unknown types {unknown}")


def partner_of(obj_type: ObjectType) -> ObjectType:
    """The fixed partner type of ``obj_type`` (an involution: ``partner_of(partner_of(t)) == t``)."""
    c = COLOURS.index(obj_type.colour)
    s = SHAPES.index(obj_type.shape)
    return ObjectType(
        COLOURS[(c + _PARTNER_COLOUR_STEP) % len(COLOURS)], SHAPES[(s + _PARTNER_SHAPE_STEP) % len(SHAPES)]
    )


def has_partner(obj_type: ObjectType, config: WorldConfig) -> bool:
    return obj_type.name in config.partnered_types


def stream_rng(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    """An independent generator for sample ``index`` of the named stream (e.g. ``"pretrain"``)."""
    stream_code = zlib.crc32(stream.encode("utf-8"))
    return np.random.default_rng([int(seed), stream_code, int(index)])


def sample_scene(rng: np.random.Generator, config: WorldConfig) -> Scene:
    """Draw a scene: a uniform object count, uniform new types, partners added with ``partner_prob``."""
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    chosen: list[ObjectType] = []
    while len(chosen) < n_objects:
        free = [t for t in ALL_TYPES if t not in chosen]
        new = free[int(rng.integers(len(free)))]
        chosen.append(new)
        partner = partner_of(new)
        # Always draw, so the random stream does not depend on whether there is room.
        wants_partner = rng.random() < config.partner_prob
        if wants_partner and has_partner(new, config) and partner not in chosen and len(chosen) < n_objects:
            chosen.append(partner)
    cells = rng.permutation(GRID_SIZE * GRID_SIZE)[:n_objects]
    objects = [SceneObject(t, int(cell) // GRID_SIZE, int(cell) % GRID_SIZE) for t, cell in zip(chosen, cells)]
    return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))))


def free_cells(scene: Scene) -> list[tuple[int, int]]:
    """Grid cells with no object, in reading order."""
    taken = {(o.row, o.col) for o in scene.objects}
    return [(r, c) for r in range(GRID_SIZE) for c in range(GRID_SIZE) if (r, c) not in taken]
