"""Writing the level-annotated copy of a dataset (same format as the input), atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from aligngpt.data.constants import DEFAULT_SCORE_FIELD
from aligngpt.data.records import RecordFile
from aligngpt.fileio import atomic_write


def write_leveled_copy(
    records: RecordFile,
    out: str | os.PathLike[str],
    *,
    levels: Mapping[int, int],
    scores: Mapping[int, float],
    drop: set[int] | frozenset[int] = frozenset(),
    score_field: str = DEFAULT_SCORE_FIELD,
    progress: bool = False,
) -> int:
    """Copy ``records`` to ``out`` with ``levels``/``scores`` written into the scored records.

    Records without a score are copied byte for byte; records in ``drop`` are left out. The output has the
    input's format (JSON array or JSONL). Returns the number of records written.
    """
    from tqdm.auto import tqdm

    level_field = records.level_field
    written = 0
    with atomic_write(out, "wb") as f:
        json_array = records.format == "json"
        f.write(b"[\n" if json_array else b"")
        for index in tqdm(range(len(records)), desc="writing", unit="rec", disable=not progress, dynamic_ncols=True):
            if index in drop:
                continue
            if index in scores:
                obj = records.raw(index)
                obj[level_field] = int(levels[index])
                obj[score_field] = float(scores[index])
                body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            else:
                body = records.raw_bytes(index)
            if json_array and written:
                f.write(b",\n")
            f.write(body)
            if not json_array:
                f.write(b"\n")
            written += 1
        f.write(b"\n]\n" if json_array else b"")
    return written


def read_scores(records: RecordFile, score_field: str = DEFAULT_SCORE_FIELD) -> dict[int, float]:
    """``{index: score}`` for every record with a numeric ``score_field`` (e.g. the output of ``score``)."""
    scores: dict[int, float] = {}
    for index in range(len(records)):
        obj = records.raw(index)
        if not isinstance(obj, dict) or score_field not in obj:
            continue
        value = obj[score_field]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{records.location(index)}: record {index}: {score_field!r} is {value!r}, not a number")
        scores[index] = float(value)
    return scores


def sidecar(out: str | os.PathLike[str], suffix: str) -> Path:
    """A file next to ``out``: ``dir/name.json`` -> ``dir/name<suffix>`` (e.g. ``.summary.txt``)."""
    out = Path(out)
    return out.with_name(out.stem + suffix)
