"""Equal-count bucketing of scores into N alignment levels by rank.

Rule: sort ascending by ``(score, position)`` — ties go to the record that comes first in the file — giving
each score a rank ``r`` in ``0..M-1``; its level is ``floor(r * N / M)``. Level 0 holds the lowest scores, N-1
the highest. When N does not divide M, level ``k`` holds ``ceil((k+1)M/N) - ceil(kM/N)`` scores, so sizes
differ by at most one and the larger levels are spread evenly (not all at the top or bottom). With M < N some
levels are empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def assign_levels(scores: Sequence[float], num_levels: int) -> np.ndarray:
    """Levels ``[M]`` int64 for ``scores`` ``[M]`` (in record order) by the rule in the module docstring."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError("scores must be a flat sequence")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"score at position {int(bad[0])} is {values[bad[0]]}; all scores must be finite")
    m = values.size
    order = np.lexsort((np.arange(m), values))  # primary key: score, then position
    ranks = np.empty(m, dtype=np.int64)
    ranks[order] = np.arange(m)
    return ranks * num_levels // max(m, 1)


def level_sizes(m: int, num_levels: int) -> list[int]:
    """How many of ``m`` scores each level receives under ``assign_levels``."""
    edges = [math.ceil(k * m / num_levels) for k in range(num_levels + 1)]
    return [edges[k + 1] - edges[k] for k in range(num_levels)]
