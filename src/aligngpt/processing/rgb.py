"""Any PIL image mode to RGB: transparency composited onto a background, high bit depths scaled (not clipped)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from aligngpt.errors import UserError

DEFAULT_BACKGROUND = (255, 255, 255)  # what transparent pixels are composited onto
_UINT8_MAX = 255
_UINT16_MAX = 65535
_UINT16_TO_UINT8 = _UINT16_MAX / _UINT8_MAX  # 257: maps 0..65535 exactly onto 0..255
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}


class ImageModeError(UserError, ValueError):
    """An image whose PIL mode cannot be converted to RGB."""


def to_rgb(image: Image.Image, *, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparency (alpha channel, palette or ``tRNS`` transparency) is composited onto ``background``. High
    bit-depth modes are scaled, not clipped: ``I;16*`` by 1/257; ``I`` and ``F`` by their value range (see
    ``_scale_to_uint8``).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    try:
        return _convert(image, mode, background)
    except ValueError as err:
        raise ImageModeError(f"cannot convert an image of PIL mode {mode!r} to RGB: {err}") from None


def _convert(image: Image.Image, mode: str, background: tuple[int, int, int]) -> Image.Image:
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(image), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, _UINT8_MAX))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(image: Image.Image) -> np.ndarray:
    """Map a single-channel high bit-depth image to uint8 ``[H, W]``.

    ``I;16`` variants hold 0..65535 and are divided by 257. ``I`` (int32) and ``F`` (float32) have no fixed
    range: values already within 0..255 are kept, int data within 0..65535 is treated as 16-bit, floats within
    0..1 are treated as unit range, and anything else is min-max scaled.
    """
    if image.mode.startswith("I;16"):
        values = np.asarray(image.convert("I"), dtype=np.float64) / _UINT16_TO_UINT8
    else:
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
        if image.mode == "F" and lo >= 0.0 and hi <= 1.0:
            values = values * _UINT8_MAX
        elif lo >= 0.0 and hi <= _UINT8_MAX:
            pass
        elif image.mode == "I" and lo >= 0.0 and hi <= _UINT16_MAX:
            values = values / _UINT16_TO_UINT8
        elif hi > lo:
            values = (values - lo) / (hi - lo) * _UINT8_MAX
        else:
            values = np.zeros_like(values)
    return np.clip(np.rint(values), 0, _UINT8_MAX).astype(np.uint8)
