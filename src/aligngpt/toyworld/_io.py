"""The toy world's names for :mod:`aligngpt.fileio`'s atomic writers, bound to ``durable=False``: everything here is
regenerated from seeds, and the data set writes thousands of files."""

from __future__ import annotations

import functools
import io
from pathlib import Path

from PIL import Image

from aligngpt.fileio import write_bytes_atomic, write_json_atomic, write_jsonl_atomic, write_text_atomic

atomic_write_bytes = functools.partial(write_bytes_atomic, durable=False)
atomic_write_text = functools.partial(write_text_atomic, durable=False)
atomic_write_json = functools.partial(write_json_atomic, durable=False)
atomic_write_jsonl = functools.partial(write_jsonl_atomic, durable=False)


def atomic_save_png(path: str | Path, image: Image.Image) -> None:
    """Write ``image`` as a PNG file atomically (not fsynced)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
