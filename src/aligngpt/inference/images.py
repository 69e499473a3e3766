"""Loading images from paths, ``file:``/``data:``/``http(s):`` URLs, with limits and an access policy.

The server passes a strict :class:`ImagePolicy` (local files only inside allowed folders, remote fetching off by
default); the command-line tools pass a permissive one. Every failure is an :class:`ImageError` whose ``code`` and
``status`` say what went wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from aligngpt.data.images import ImageLoadError, ImageTooLargeError, decode_rgb, pil_error_text
from aligngpt.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Largest image a chat, predict or server request may send; data files use data.constants.DEFAULT_MAX_PIXELS.
REQUEST_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_FETCH_TIMEOUT_S = 10.0
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?)(?P<b64>;base64)?,(?P<data>.*)$", re.S
)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")  # two letters at least, so never a drive letter
_HTTP_OK = 200
_HTTP_FORBIDDEN = 403
_HTTP_BAD_REQUEST = 400
_HTTP_TOO_LARGE = 413


class ImageError(UserError, ValueError):
    """An image could not be used. ``status`` is the HTTP status a server should answer with."""

    def __init__(self, message: str, code: str, status: int = _HTTP_BAD_REQUEST):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how large they may be.

    ``allow_dirs``: folders local paths and ``file:`` URLs must resolve into (``None``: any local file; empty: none).
    """

    allow_dirs: tuple[Path, ...] | None = None
    allow_remote: bool = True
    max_pixels: int = REQUEST_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S
    resolved_dirs: tuple[Path, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if self.allow_dirs is not None:
            object.__setattr__(self, "resolved_dirs", tuple(Path(d).resolve() for d in self.allow_dirs))


def decode_image(data: bytes, max_pixels: int = REQUEST_MAX_PIXELS, source: str = "image") -> Image.Image:
    """Decode encoded image bytes into an RGB image (the data sets' conversion, transparency composited), refusing
    images over ``max_pixels`` before decoding them."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"{source} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                "image_too_large",
                _HTTP_BAD_REQUEST,
            )
        return decode_rgb(image, source)
    except ImageError:
        raise
    except ImageLoadError as err:
        code = "image_too_large" if isinstance(err, ImageTooLargeError) else "invalid_image"
        raise ImageError(str(err), code) from err
    except Image.DecompressionBombError as err:
        raise ImageError(f"{source}: {err}", "image_too_large") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{source} could not be decoded as an image ({pil_error_text(err)})", "invalid_image") from err


def decode_data_url(url: str, max_pixels: int = REQUEST_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """An image from a ``data:[mime];base64,...`` URL."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ImageError("malformed data: URL (expected data:image/<type>;base64,<data>)", "invalid_image_url")
    if not match["b64"]:
        raise ImageError("data: URL images must be base64-encoded (';base64,')", "invalid_image_url")
    payload = re.sub(r"\s+", "", match["data"])
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageError(f"image data exceeds {max_bytes} bytes", "image_too_large", _HTTP_TOO_LARGE)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(f"data: URL holds invalid base64 ({err})", "invalid_base64") from err
    return decode_image(raw, max_pixels, "data: URL image")


def read_local_image(path: str | os.PathLike, policy: ImagePolicy) -> Image.Image:
    """An image file, checked against ``policy.allow_dirs`` after resolving symlinks and ``..``."""
    raw = Path(path).expanduser()
    if policy.allow_dirs is not None:
        if not policy.resolved_dirs:
            raise ImageError(
                "local image files are disabled on this server (start it with --allow-dir)",
                "local_files_disabled",
                _HTTP_FORBIDDEN,
            )
        if not raw.is_absolute():
            raw = policy.resolved_dirs[0] / raw
        resolved = raw.resolve()
        if not any(resolved.is_relative_to(folder) for folder in policy.resolved_dirs):
            raise ImageError(f"{path} is outside the allowed folders", "path_not_allowed", _HTTP_FORBIDDEN)
    else:
        resolved = raw.resolve()
    if not resolved.is_file():
        raise ImageError(f"image file not found: {path}", "image_not_found")
    size = resolved.stat().st_size
    if size > policy.max_bytes:
        raise ImageError(f"{path} is {size} bytes; the limit is {policy.max_bytes}", "image_too_large", _HTTP_TOO_LARGE)
    return decode_image(resolved.read_bytes(), policy.max_pixels, str(path))


def fetch_remote_image(url: str, policy: ImagePolicy) -> Image.Image:
    """Download an ``http(s)`` image (size-capped, with a timeout) when the policy allows remote images."""
    if not policy.allow_remote:
        raise ImageError(
            "remote image URLs are disabled on this server (start it with --allow-remote-images)",
            "remote_images_disabled",
            _HTTP_FORBIDDEN,
        )
    import httpx

    try:
        with httpx.stream("GET", url, timeout=policy.fetch_timeout_s, follow_redirects=True) as response:
            if response.status_code != _HTTP_OK:
                raise ImageError(f"fetching {url} gave HTTP {response.status_code}", "image_fetch_failed")
            chunks, total = [], 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > policy.max_bytes:
                    raise ImageError(f"{url} exceeds {policy.max_bytes} bytes", "image_too_large", _HTTP_TOO_LARGE)
                chunks.append(chunk)
    except httpx.HTTPError as err:
        raise ImageError(f"fetching {url} failed: {err}", "image_fetch_failed") from err
    return decode_image(b"".join(chunks), policy.max_pixels, url)


def load_image(source: str, policy: ImagePolicy | None = None) -> Image.Image:
    """An RGB image from a ``data:``, ``file:`` or ``http(s):`` URL or a local path, following ``policy``."""
    policy = policy or ImagePolicy()
    match = _SCHEME.match(source)
    scheme = match[1].lower() if match else ""
    if scheme == "data":
        return decode_data_url(source, policy.max_pixels, policy.max_bytes)
    if scheme in ("http", "https"):
        return fetch_remote_image(source, policy)
    if scheme == "file":
        parsed = urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise ImageError(f"file: URL with a remote host is not supported: {source}", "invalid_image_url")
        return read_local_image(unquote(parsed.path), policy)
    if scheme:
        raise ImageError(f"unsupported image URL scheme {scheme!r}", "invalid_image_url")
    return read_local_image(source, policy)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
