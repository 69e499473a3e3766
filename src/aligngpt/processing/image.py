"""Image preprocessing: ``pad`` (pad to square with the mean colour) or ``square``, then the encoder's processor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from aligngpt.choices import IMAGE_ASPECT_RATIOS
from aligngpt.processing.rgb import to_rgb


def mean_colour(image_mean: Sequence[float]) -> tuple[int, ...]:
    """The padding colour: ``int(255 * mean)`` per channel ((122, 116, 104) for OpenAI CLIP)."""
    return tuple(int(255 * m) for m in image_mean)


def pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Centre ``image`` on a square canvas of side ``max(W, H)`` filled with ``fill``."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def preprocess_images(images: Sequence[Image.Image], image_processor, aspect_ratio: str = "pad") -> torch.Tensor:
    """Turn PIL images into ``[n, 3, H, W]`` pixel values for the vision tower.

    Args:
        images: PIL images in any mode.
        image_processor: the encoder's HF image processor (e.g. ``CLIPImageProcessor``).
        aspect_ratio: ``pad`` (as the official code: pad to a square in the mean colour first) or ``square``.
    """
    if aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"Unknown image_aspect_ratio {aspect_ratio!r}; known: {IMAGE_ASPECT_RATIOS}")
    rgb = [to_rgb(image) for image in images]
    if aspect_ratio == "pad":
        fill = mean_colour(image_processor.image_mean)
        rgb = [pad_to_square(image, fill) for image in rgb]
    return image_processor(images=rgb, return_tensors="pt")["pixel_values"]
