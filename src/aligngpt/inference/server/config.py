"""One server's limits and policies, parsed once from the command line (``aligngpt serve``) or given by tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from aligngpt.inference.images import DEFAULT_MAX_BYTES, REQUEST_MAX_PIXELS, ImagePolicy

MIB = 1024 * 1024


@dataclass
class ServerConfig:
    """Limits and policies of one server. ``max_prompt_tokens=None`` uses the model's context length."""

    model_name: str = "aligngpt"
    api_key: str | None = None
    allow_dirs: tuple[Path, ...] = ()
    allow_remote_images: bool = False
    max_body_bytes: int = 32 * MIB
    max_image_bytes: int = DEFAULT_MAX_BYTES
    max_image_pixels: int = REQUEST_MAX_PIXELS
    max_prompt_tokens: int | None = None
    max_tokens_limit: int = 1024
    default_max_tokens: int = 512
    default_temperature: float = 0.2
    default_top_p: float = 0.7
    max_queue: int = 64
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    created: int = field(default_factory=lambda: int(time.time()))

    def image_policy(self) -> ImagePolicy:
        """The strict policy for request images: local files only inside ``allow_dirs``, remote only if allowed."""
        return ImagePolicy(
            allow_dirs=tuple(self.allow_dirs),
            allow_remote=self.allow_remote_images,
            max_pixels=self.max_image_pixels,
            max_bytes=self.max_image_bytes,
        )
