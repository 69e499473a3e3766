"""``aligngpt levels``: re-bucket a scored file into N levels from its saved scores (no CLIP needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aligngpt.data.constants import DEFAULT_LEVEL_FIELD, DEFAULT_SCORE_FIELD
from aligngpt.data.records import RecordFile
from aligngpt.scoring.bucketing import assign_levels
from aligngpt.scoring.output import read_scores, write_leveled_copy
from aligngpt.scoring.summary import LevelSummary


@dataclass
class RelevelResult:
    out: Path
    summary_txt: Path
    summary_png: Path
    num_scored: int
    num_unscored: int


def relevel(
    scored: str | os.PathLike[str],
    out: str | os.PathLike[str],
    num_levels: int,
    *,
    level_field: str = DEFAULT_LEVEL_FIELD,
    score_field: str = DEFAULT_SCORE_FIELD,
    progress: bool = True,
) -> RelevelResult:
    """Write ``out``: ``scored`` with ``level_field`` recomputed from ``score_field`` into N levels.

    Records without a score (text-only) are copied through unchanged.
    """
    if Path(out).resolve() == Path(scored).resolve():
        raise ValueError("the output file must differ from the scored input file")
    records = RecordFile(scored, level_field=level_field)
    scores = read_scores(records, score_field)
    if not scores:
        raise ValueError(f"{scored}: no record has a {score_field!r} field; run `aligngpt score` first")
    order = sorted(scores)
    levels = assign_levels([scores[i] for i in order], num_levels)
    write_leveled_copy(
        records,
        out,
        levels=dict(zip(order, levels.tolist(), strict=True)),
        scores=scores,
        score_field=score_field,
        progress=progress,
    )
    summary = LevelSummary(
        num_levels=num_levels,
        scores=np.asarray([scores[i] for i in order], dtype=np.float64),
        levels=levels,
        total_records=len(records),
        text_only=len(records) - len(scores),
    )
    txt, png = summary.write(out)
    return RelevelResult(Path(out), txt, png, len(scores), len(records) - len(scores))
