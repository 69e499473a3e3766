"""Safe image loading: path confinement, decompression-bomb limit, clear errors, any PIL mode to RGB.

``load_image(root, relative_path)`` is the entry point for data sets. :func:`decode_rgb` (decode + :func:`to_rgb`)
is the one conversion every path uses — training, ``predict``, ``eval`` and the server — so a transparent or
palette image gives the same pixels everywhere. Every failure raises a subclass of ``ImageLoadError`` whose
``kind`` is the matching ``ProblemKind``, so callers can report or skip the record.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from aligngpt.data.constants import DEFAULT_MAX_PIXELS
from aligngpt.data.problems import ProblemKind
from aligngpt.errors import UserError

DEFAULT_BACKGROUND = (255, 255, 255)  # what transparent pixels are composited onto
_UINT8_MAX = 255
_UINT16_MAX = 65535
_UINT16_TO_UINT8 = _UINT16_MAX / _UINT8_MAX  # 257: maps 0..65535 exactly onto 0..255
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
_PIL_LIMIT_LOCK = threading.Lock()
_FILE_OBJECT_REPR = re.compile(r"\s*<_io\.\w+ (object at 0x[0-9a-fA-F]+|name=[^>]*)>")


class ImageLoadError(UserError):
    """Base class; ``kind`` says which record problem this is."""

    kind: ProblemKind = ProblemKind.CORRUPT_IMAGE


class UnsafeImagePathError(ImageLoadError):
    kind = ProblemKind.UNSAFE_IMAGE_PATH


class ImageNotFoundError(ImageLoadError):
    kind = ProblemKind.MISSING_IMAGE


class ImageUnreadableError(ImageLoadError):
    kind = ProblemKind.UNREADABLE_IMAGE


class CorruptImageError(ImageLoadError):
    kind = ProblemKind.CORRUPT_IMAGE


class ImageTooLargeError(ImageLoadError):
    kind = ProblemKind.IMAGE_TOO_LARGE


def pil_error_text(err: BaseException) -> str:
    """PIL's message without the ``<_io.BytesIO object at 0x...>`` it puts in for images decoded from memory."""
    if isinstance(err, UnidentifiedImageError):
        return "not a recognised image format (corrupt, or not an image)"
    return _FILE_OBJECT_REPR.sub("", str(err)).strip() or type(err).__name__


def resolve_image_path(root: str | os.PathLike[str], relative: str, *, allow_symlink_escape: bool = False) -> Path:
    """Return ``root / relative`` after checking that it stays inside ``root``.

    Absolute paths (POSIX or Windows style) and any ``..`` component are refused without touching the file
    system. The resolved path (symlinks followed) must also lie inside the resolved root unless
    ``allow_symlink_escape`` (for image folders assembled from symlinks to other disks).
    """
    if not relative or "\x00" in relative:
        raise UnsafeImagePathError(f"image path {relative!r} is empty or contains a NUL byte")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or relative.startswith(("/", "\\")):
        raise UnsafeImagePathError(f"image path {relative!r} is absolute; it must be relative to the image root")
    if ".." in posix.parts or ".." in windows.parts:
        raise UnsafeImagePathError(f"image path {relative!r} contains '..'; it must stay inside the image root")
    root_path = Path(root)
    candidate = root_path / posix
    if not allow_symlink_escape:
        real_root, real = root_path.resolve(), candidate.resolve()
        if real != real_root and real_root not in real.parents:
            raise UnsafeImagePathError(
                f"image path {relative!r} resolves to {real}, outside the image root {real_root}"
            )
    return candidate


def load_image(
    root: str | os.PathLike[str],
    relative: str,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    decode: bool = True,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    allow_symlink_escape: bool = False,
) -> Image.Image:
    """Open ``root/relative`` safely and return it as an RGB image.

    ``decode=False`` reads only the header (format, size) and returns the lazily opened image unconverted — a
    cheap existence/size check. ``max_pixels=None`` disables the size limit.
    """
    path = resolve_image_path(root, relative, allow_symlink_escape=allow_symlink_escape)
    image = open_image(path, max_pixels=max_pixels)
    if not decode:
        return image
    return decode_rgb(image, path, background=background)


def decode_rgb(
    image: Image.Image, name: str | os.PathLike[str], *, background: tuple[int, int, int] = DEFAULT_BACKGROUND
) -> Image.Image:
    """Decode a lazily opened image and convert it with :func:`to_rgb`; ``name`` says which image in errors."""
    try:
        image.load()
        return to_rgb(image, background=background)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"image {name} is too large to decode safely: {err}") from None
    except Exception as err:  # PIL signals damage with OSError, SyntaxError, ValueError, struct.error, ...
        raise CorruptImageError(
            f"image {name} is corrupt or truncated: {type(err).__name__}: {pil_error_text(err)}"
        ) from None


def open_image(
    path: Path | IO[bytes], *, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Open a file or a binary stream (header only) and enforce the pixel limit; raises ``ImageLoadError``
    subclasses whose messages name ``name`` (default: the path)."""
    if name is None:
        name = str(path)
    try:
        # PIL checks its global MAX_IMAGE_PIXELS inside open(); disable that (briefly, under a lock) and apply
        # our own per-call limit instead so that the limit is configurable without a process-wide side effect.
        with _PIL_LIMIT_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except FileNotFoundError:
        raise ImageNotFoundError(f"image file {name} does not exist") from None
    except (PermissionError, IsADirectoryError) as err:
        raise ImageUnreadableError(f"image file {name} cannot be read: {err.strerror}") from None
    except UnidentifiedImageError as err:
        raise CorruptImageError(f"image file {name} is {pil_error_text(err)}") from None
    except Exception as err:
        raise CorruptImageError(
            f"image file {name} cannot be opened: {type(err).__name__}: {pil_error_text(err)}"
        ) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"image {name} is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
        )
    return image


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
        raise CorruptImageError(f"cannot convert an image of PIL mode {mode!r} to RGB: {err}") from None


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
