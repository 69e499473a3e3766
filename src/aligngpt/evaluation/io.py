"""Small file helpers shared by the benchmark modules: JSON/JSONL reading, atomic writes, data-file lookup."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngpt.data.atomic import write_bytes_atomic as atomic_write_bytes
from aligngpt.errors import UserError


class MissingDataError(UserError, FileNotFoundError):
    """A benchmark data file is missing; the message names what and where it was expected."""


class BadRecordError(UserError, ValueError):
    """A record of a data or predictions file is malformed; the message names the file and line."""


def find_file(data_dir: Path, candidates: Sequence[str], what: str) -> Path:
    """Return the first ``data_dir / candidate`` that exists, else raise :class:`MissingDataError`."""
    data_dir = Path(data_dir)
    for name in candidates:
        path = data_dir / name
        if path.exists():
            return path
    looked = ", ".join(str(data_dir / name) for name in candidates)
    raise MissingDataError(f"{what} not found; expected one of: {looked}")


def pick_dir(data_dir: Path, candidates: Sequence[str]) -> Path:
    """First existing folder among the candidates, else the first candidate (images may be fetched later)."""
    for name in candidates:
        if (Path(data_dir) / name).is_dir():
            return Path(data_dir) / name
    return Path(data_dir) / candidates[0]


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise BadRecordError(f"{path}: not valid JSON ({err})") from err


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file strictly: a bad line raises :class:`BadRecordError` naming file and line."""
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"file not found: {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BadRecordError(f"{path}:{line_no}: not valid JSON ({err})") from err
    return records


@dataclass
class Predictions:
    """The records of an answer file (``{"question_id", "prompt", "text", ...}`` per line)."""

    path: Path
    records: list[dict]
    bad_lines: list[int] = field(default_factory=list)

    def text_by_id(self) -> dict[Any, str]:
        """``question_id -> text``; a later line with the same id wins (as the official dict comprehensions)."""
        return {r["question_id"]: r["text"] for r in self.records}


def read_predictions(path: Path, *, skip_bad_lines: bool = False) -> Predictions:
    """Read an official answer file.

    ``skip_bad_lines=True`` reproduces the VQAv2/VizWiz converters, which silently skip lines that are not
    valid JSON (they are counted in ``bad_lines``); otherwise a bad line is an error naming file and line.
    Every record must have ``question_id`` and ``text``.
    """
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"predictions file not found: {path}")
    records: list[dict] = []
    bad: list[int] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if skip_bad_lines:
                    bad.append(line_no)
                    continue
                raise BadRecordError(f"{path}:{line_no}: not valid JSON ({err})") from err
            for key in ("question_id", "text"):
                if not isinstance(record, dict) or key not in record:
                    raise BadRecordError(f"{path}:{line_no}: record has no '{key}' field")
            records.append(record)
    return Predictions(path=path, records=records, bad_lines=bad)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return atomic_write_bytes(path, data)


def write_json_atomic(path: Path, obj: Any, *, indent: int | None = 1) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
