"""Content digests of input files, so that a resumed job can tell whether its inputs changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

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


def file_digest(paths: Iterable[Path]) -> str:
    """Hex SHA-256 over the contents of ``paths`` in sorted order, each file's name included."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        update_with_file(digest, path)
    return digest.hexdigest()
