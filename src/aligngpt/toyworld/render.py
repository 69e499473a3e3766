"""Rendering a scene to a small RGB image with PIL.

Each object is drawn inside its grid cell with a little random jitter (size, offset, colour) and the background
is a random light grey, so images of the same scene differ slightly. Drawing happens at ``SUPERSAMPLE`` times the
final size and is then box-downsampled, which anti-aliases the edges.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from aligngpt.toyworld.world import GRID_SIZE, Scene, SceneObject, WorldConfig

RGB = tuple[int, int, int]

BASE_COLOURS: dict[str, RGB] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 220),
    "yellow": (235, 215, 35),
    "purple": (145, 55, 190),
    "orange": (240, 135, 25),
}
SUPERSAMPLE = 4
COLOUR_JITTER = 15  # max change per channel
BACKGROUND_RANGE = (195, 240)  # grey level of the background
OBJECT_FRACTION_RANGE = (0.6, 0.8)  # object size as a fraction of the cell side
MAX_OFFSET_FRACTION = 0.08  # max centre shift as a fraction of the cell side
CROSS_ARM_FRACTION = 0.34  # width of a cross arm relative to the object size


def _jittered_colour(base: RGB, rng: np.random.Generator) -> RGB:
    delta = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3).tolist()
    return tuple(min(255, max(0, v + d)) for v, d in zip(base, delta))  # type: ignore[return-value]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, cell: float, rng: np.random.Generator) -> None:
    size = cell * rng.uniform(*OBJECT_FRACTION_RANGE)
    cx = (obj.col + 0.5) * cell + rng.uniform(-1, 1) * MAX_OFFSET_FRACTION * cell
    cy = (obj.row + 0.5) * cell + rng.uniform(-1, 1) * MAX_OFFSET_FRACTION * cell
    half = size / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = _jittered_colour(BASE_COLOURS[obj.type.colour], rng)
    shape = obj.type.shape
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif shape == "cross":
        arm = size * CROSS_ARM_FRACTION / 2
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
    else:  # pragma: no cover - ObjectType validates shapes
        raise ValueError(f"cannot draw shape {shape!r}")


def render_scene(scene: Scene, rng: np.random.Generator, config: WorldConfig) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``config.image_size`` square pixels."""
    big = config.image_size * SUPERSAMPLE
    grey = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1))
    canvas = Image.new("RGB", (big, big), (grey, grey, grey))
    draw = ImageDraw.Draw(canvas)
    cell = big / GRID_SIZE
    for obj in scene.objects:
        _draw_object(draw, obj, cell, rng)
    return canvas.resize((config.image_size, config.image_size), Image.Resampling.BOX)


def image_to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 array of shape (H, W, 3)."""
    return np.array(image.convert("RGB"), dtype=np.uint8)
