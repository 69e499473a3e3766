"""The resumable side file of ``aligngpt score``: one JSON line per finished batch, fsynced as it is written.

Line 1 is a header describing the run (data file and its SHA-256, images, model, batch size, device, dtype ...);
a rerun with a different header refuses to continue. Each following line is ``{"batch": k, "scores": [[index, id,
score], ...], "skipped": [report, ...]}``. A torn last line (killed mid-write) is cut off when the log is reopened,
so that batch is simply recomputed (so is the batch of a damaged line); batches are fixed slices of the image
records, so a recomputed batch is the same computation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngpt.errors import UserError
from aligngpt.fileio import JsonlAppender, cut_torn_tail, read_jsonl_log, write_jsonl_atomic


class ScoreLogMismatchError(UserError, ValueError):
    """The existing log was written by a run with different settings."""


@dataclass
class BatchScores:
    """What one batch produced: ``scores`` as ``(index, id, score)`` and reports of skipped records."""

    batch: int
    scores: list[tuple[int, str, float]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "scores": [list(s) for s in self.scores], "skipped": self.skipped}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BatchScores:
        return cls(
            batch=int(obj["batch"]),
            scores=[(int(i), str(rid), float(s)) for i, rid, s in obj["scores"]],
            skipped=list(obj["skipped"]),
        )


class ScoreLog:
    """Append-only, crash-safe record of finished batches."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any]):
        self.path = Path(path)
        self.header = header
        self.done: dict[int, BatchScores] = {}

    def open(self, *, restart: bool = False) -> dict[int, BatchScores]:
        """Load finished batches (cutting a torn tail); start a new log if there is none or ``restart``."""
        log = read_jsonl_log(self.path)
        if restart or not log.records or 1 in log.bad_lines:  # none yet, or killed before the header was complete
            self._start()
            return self.done
        header = log.records[0]
        if header != self.header:
            raise ScoreLogMismatchError(self._describe_mismatch(header if isinstance(header, dict) else {}))
        cut_torn_tail(log)
        for obj in log.records[1:]:
            try:
                batch = BatchScores.from_json(obj)
            except (ValueError, KeyError, TypeError):
                continue  # a damaged line: that batch is recomputed
            self.done[batch.batch] = batch
        return self.done

    def append(self, batch: BatchScores) -> None:
        """Write one batch line with a single write, then flush and fsync."""
        with JsonlAppender(self.path) as log:
            log.write(batch.to_json())
            log.sync()
        self.done[batch.batch] = batch

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _start(self) -> None:
        write_jsonl_atomic(self.path, [self.header])
        self.done = {}

    def _describe_mismatch(self, old: dict[str, Any]) -> str:
        keys = sorted(set(old) | set(self.header))
        diffs = [
            f"{k}: {old.get(k)!r} (saved) vs {self.header.get(k)!r} (now)"
            for k in keys
            if old.get(k) != self.header.get(k)
        ]
        return (
            f"{self.path} holds scores from a run with other settings ({'; '.join(diffs)}). "
            "Rerun with the same settings to resume, or pass --restart to discard the saved scores."
        )
