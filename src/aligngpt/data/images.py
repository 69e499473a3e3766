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

from PIL import Image, UnidentifiedImageError

from aligngpt.data.constants import DEFAULT_MAX_PIXELS
from aligngpt.data.problems import ProblemKind
from aligngpt.errors import UserError
from aligngpt.processing.rgb import DEFAULT_BACKGROUND, ImageModeError, to_rgb

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
    except ImageModeError as err:
        raise CorruptImageError(f"image {name}: {err}") from None
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


__all__ = [
    "DEFAULT_BACKGROUND",
    "CorruptImageError",
    "ImageLoadError",
    "ImageNotFoundError",
    "ImageTooLargeError",
    "ImageUnreadableError",
    "UnsafeImagePathError",
    "decode_rgb",
    "load_image",
    "open_image",
    "pil_error_text",
    "resolve_image_path",
    "to_rgb",
]
