"""File helpers of the benchmark modules: data-file lookup, JSON and answer-file reading.

Generic reading and writing (atomic writes, JSONL) is :mod:`aligngpt.fileio`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngpt.fileio import BadRecordError, MissingDataError, parse_tail, read_jsonl_log

_DAMAGED = object()  # a line that is not valid JSON


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
    log = read_jsonl_log(path)
    numbered: list[tuple[int, Any]] = [*zip(log.record_lines, log.records), *((n, _DAMAGED) for n in log.bad_lines)]
    if log.tail.strip():
        tail = parse_tail(log)
        numbered.append((log.tail_line, _DAMAGED if tail is None else tail))
    records: list[dict] = []
    bad: list[int] = []
    for line_no, record in sorted(numbered, key=lambda pair: pair[0]):
        if record is _DAMAGED:
            if skip_bad_lines:
                bad.append(line_no)
                continue
            raise BadRecordError(f"{path}:{line_no}: not valid JSON")
        for key in ("question_id", "text"):
            if not isinstance(record, dict) or key not in record:
                raise BadRecordError(f"{path}:{line_no}: record has no '{key}' field")
        records.append(record)
    return Predictions(path=path, records=records, bad_lines=bad)
