"""Cached, atomically published zoo parts (one folder per model).

A part is built in a temporary sibling folder and renamed into place only when complete, with a ``part.json``
recording the hash of everything that determined it. A folder whose ``part.json`` matches is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from aligngpt.toyworld._io import atomic_write_json

PART_FILE = "part.json"


def settings_key(settings: object) -> str:
    """A stable hash of JSON-serialisable ``settings``."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def finished_part(folder: Path, key: str) -> dict | None:
    """The ``part.json`` record of ``folder`` if it was built with ``key``, else None."""
    try:
        record = json.loads((folder / PART_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("key") == key else None


def build_part(folder: Path, key: str, settings: object, build: Callable[[Path], dict]) -> dict:
    """Reuse ``folder`` if finished with ``key``; else run ``build(tmp_dir) -> info`` and publish atomically.

    Returns the part record ``{"key", "settings", "reused", **info}``.
    """
    record = finished_part(folder, key)
    if record is not None:
        return {**record, "reused": True}
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        info = build(tmp)
        record = {"key": key, "settings": settings, **info}
        atomic_write_json(tmp / PART_FILE, record)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**record, "reused": False}
