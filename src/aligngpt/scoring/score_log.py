"""The resumable side file of ``aligngpt score``: one JSON line per finished batch, fsynced as it is written.

Line 1 is a header describing the run (data file, model, batch size, device, dtype ...); a rerun with a
different header refuses to continue. Each following line is ``{"batch": k, "scores": [[index, id, score],
...], "skipped": [report, ...]}``. A torn last line (killed mid-write) is cut off when the log is reopened, so
that batch is simply recomputed; batches are fixed slices of the image records, so a recomputed batch is the
same computation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngpt.errors import UserError


class ScoreLogMismatchError(UserError, ValueError):
    """The existing log was written by a run with different settings."""


@dataclass
class BatchScores:
    """What one batch produced: ``scores`` as ``(index, id, score)`` and reports of skipped records."""

    batch: int
    scores: list[tuple[int, str, float]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_line(self) -> bytes:
        body = {"batch": self.batch, "scores": [list(s) for s in self.scores], "skipped": self.skipped}
        return (json.dumps(body, ensure_ascii=False) + "\n").encode("utf-8")

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
        if restart or not self.path.exists():
            self._start()
            return self.done
        good_end = 0
        with self.path.open("rb") as f:
            first = f.readline()
            try:
                header = json.loads(first) if first.endswith(b"\n") else None
            except json.JSONDecodeError:
                header = None
            if header is None:  # killed before the header was complete
                f.close()
                self._start()
                return self.done
            if header != self.header:
                raise ScoreLogMismatchError(self._describe_mismatch(header))
            good_end = len(first)
            for line in f:
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("torn line")
                    batch = BatchScores.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    break
                self.done[batch.batch] = batch
                good_end += len(line)
        if good_end < self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        return self.done

    def append(self, batch: BatchScores) -> None:
        """Write one batch line with a single write, then flush and fsync."""
        with self.path.open("ab") as f:
            f.write(batch.to_line())
            f.flush()
            os.fsync(f.fileno())
        self.done[batch.batch] = batch

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("wb") as f:
            f.write((json.dumps(self.header, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
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
