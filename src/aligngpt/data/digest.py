"""Content digests of input files, so that a resumed job can tell whether its inputs changed."""

from __future__ import annotations

import hashlib
import os

_BLOCK_BYTES = 1 << 20


def update_with_file(digest, path: str | os.PathLike[str]) -> None:
    """Feed the bytes of ``path`` into ``digest`` (a ``hashlib`` object), a block at a time."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK_BYTES), b""):
            digest.update(block)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the contents of ``path``."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()
