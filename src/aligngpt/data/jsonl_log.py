"""Reading back append-only JSONL files (answer files, partial outputs) after a kill or a full disk.

Such files are written one line at a time and flushed, so an interrupted run leaves at most one *torn* line: the
bytes after the last newline. That line is never trusted, even when it happens to parse (a kill between the
record and its newline): appending to it would glue the next record onto it. Resuming cuts exactly that tail
and keeps every complete line before it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngpt.errors import writing

NEWLINE = b"\n"


@dataclass
class JsonlLog:
    """What a JSONL file holds: its complete, valid lines and where the rest went.

    Attributes:
        records: the parsed complete lines, in file order (blank lines left out).
        bad_lines: 1-based numbers of complete lines that are not valid JSON.
        torn_bytes: how many bytes followed the last newline (0: the file ends cleanly).
    """

    path: Path
    records: list[Any] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    torn_bytes: int = 0

    @property
    def clean(self) -> bool:
        """Every line is complete and valid: appending to the file is safe and its lines are exactly ``records``."""
        return not self.bad_lines and not self.torn_bytes


def read_jsonl_log(path: str | os.PathLike[str]) -> JsonlLog:
    """Parse ``path`` line by line without changing it; a missing file reads as empty."""
    log = JsonlLog(Path(path))
    if not log.path.is_file():
        return log
    with log.path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(NEWLINE):
                log.torn_bytes = len(line)
                break
            if not line.strip():
                continue
            try:
                log.records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.bad_lines.append(number)
    return log


def cut_torn_tail(log: JsonlLog) -> None:
    """Truncate the file of ``log`` to its last newline (the torn line goes; complete lines stay), durably."""
    if not log.torn_bytes:
        return
    size = log.path.stat().st_size
    with writing(log.path), log.path.open("r+b") as handle:
        handle.truncate(size - log.torn_bytes)
        handle.flush()
        os.fsync(handle.fileno())
    log.torn_bytes = 0
