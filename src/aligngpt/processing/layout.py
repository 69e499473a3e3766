"""The sequence layout of one sample: where the image positions and the alignment slot go, and batch padding.

One routine for both the processor and the replay of official batches (``convert.official.batch_from_official``),
so the two cannot drift apart: ``[BOS] [ALIGN] text… [IMG]×N text…``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from aligngpt.modeling.aligngpt import IGNORE_INDEX


def expand_image(
    ids: list[int],
    labels: list[int],
    at: int,
    *,
    image_token_id: int,
    num_image_tokens: int,
    alignment_token_id: int | None = None,
    alignment_slot: int = 0,
    columns: Sequence[tuple[list, Any]] = (),
) -> None:
    """In place: the image marker at ``ids[at]`` becomes ``num_image_tokens`` image positions, and with an
    ``alignment_token_id`` the alignment slot is inserted at ``alignment_slot`` (1 after a BOS, else 0). Neither is
    supervised (``IGNORE_INDEX`` labels). ``columns``: further lists parallel to ``ids`` with the value their new
    positions get (e.g. the processor's character offsets)."""
    for column, fill in ((ids, image_token_id), (labels, IGNORE_INDEX), *columns):
        column[at : at + 1] = [fill] * num_image_tokens
    if alignment_token_id is not None:
        for column, fill in ((ids, alignment_token_id), (labels, IGNORE_INDEX), *columns):
            column.insert(alignment_slot, fill)


def pad_rows(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    """``[B, L]`` long tensor of ``rows`` padded with ``value`` to the longest (``side``: "right" or "left")."""
    length = max(len(row) for row in rows)
    padded = torch.full((len(rows), length), value, dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
            padded[index, span] = torch.as_tensor(row, dtype=torch.long)
    return padded
