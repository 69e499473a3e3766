"""Defaults shared by the data and scoring modules and their CLIs (import-light for ``aligngpt --help``)."""

from __future__ import annotations

import os
from typing import Literal, get_args

DEFAULT_LEVEL_FIELD = "similarity"  # the official pre-training file's level field
DEFAULT_NUM_LEVELS = 8
Stage = Literal["pretrain", "finetune"]
STAGES: tuple[str, ...] = get_args(Stage)
ON_BAD_RECORD: tuple[str, ...] = ("error", "skip")
# PIL's own default limit (about 89.5 megapixels); larger images are refused unless max_pixels is raised.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_SCORE_FIELD = "clip_score"
DEFAULT_SCORE_BATCH_SIZE = 64
DEFAULT_SCORE_WORKERS = min(4, max(1, (os.cpu_count() or 1) - 1))
