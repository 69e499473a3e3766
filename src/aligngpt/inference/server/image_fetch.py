"""A request's image, loaded off the event loop under the server's :class:`ImagePolicy`; faults become API errors."""

from __future__ import annotations

from PIL import Image
from starlette.concurrency import run_in_threadpool

from aligngpt.inference.images import ImageError, ImagePolicy, load_image
from aligngpt.inference.server.errors import APIError


async def fetch_image(url: str | None, policy: ImagePolicy) -> Image.Image | None:
    """The RGB image at ``url`` (``None`` for a text-only conversation).

    A refused or broken image is an :class:`APIError` with the policy's status and code (``param``: ``messages``).
    """
    if url is None:
        return None
    try:
        return await run_in_threadpool(load_image, url, policy)
    except ImageError as err:
        raise APIError(err.status, str(err), err.code, "messages") from err
