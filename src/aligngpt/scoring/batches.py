"""Batch preparation for scoring, inside DataLoader workers: read records, load images, preprocess, tokenize.

Each item is a whole fixed batch (``batch_size=None`` in the DataLoader), so batch composition never depends
on the number of workers or on which batches a resumed run still has to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from aligngpt.data.images import ImageLoadError, load_image
from aligngpt.data.problems import Problem, ProblemKind, RecordFormatError
from aligngpt.data.records import Record, RecordFile
from aligngpt.data.validation import IMAGE_TOKEN, RecordReport


@dataclass
class PreparedBatch:
    """Model inputs for the good records of one batch, plus reports for its bad records."""

    batch: int
    indices: list[int]
    ids: list[str]
    pixel_values: torch.Tensor | None  # [B, 3, H, W] float32, None when every record of the batch is bad
    text_inputs: dict[str, torch.Tensor]  # input_ids / attention_mask [B, T]
    bad: list[RecordReport] = field(default_factory=list)

    def pin_memory(self) -> PreparedBatch:
        """Called by the DataLoader (``pin_memory=True``) to page-lock the tensors for fast GPU copies."""
        if self.pixel_values is not None:
            self.pixel_values = self.pixel_values.pin_memory()
        self.text_inputs = {k: v.pin_memory() for k, v in self.text_inputs.items()}
        return self


def caption_of(record: Record, image_token: str = IMAGE_TOKEN) -> str | None:
    """The text scored against the image: the first ``gpt`` turn, with any image token removed."""
    caption = record.caption
    if caption is None:
        return None
    caption = caption.replace(image_token, " ").strip()
    return caption or None


class ScoringBatches(Dataset):
    """``dataset[k]`` prepares batch ``batch_numbers[k]`` (a fixed slice of record indices)."""

    def __init__(
        self,
        records: RecordFile,
        batches: Sequence[Sequence[int]],
        batch_numbers: Sequence[int],
        image_root: Path,
        preprocess: Callable[[list[Image.Image]], torch.Tensor],
        tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
        *,
        max_pixels: int | None,
        allow_symlink_escape: bool = False,
    ):
        self.records = records
        self.batches = batches
        self.batch_numbers = list(batch_numbers)
        self.image_root = image_root
        self.preprocess = preprocess
        self.tokenize = tokenize
        self.max_pixels = max_pixels
        self.allow_symlink_escape = allow_symlink_escape

    def __len__(self) -> int:
        return len(self.batch_numbers)

    def __getitem__(self, k: int) -> PreparedBatch:
        number = self.batch_numbers[k]
        indices, ids, images, captions, bad = [], [], [], [], []
        for index in self.batches[number]:
            loaded = self._load(index)
            if isinstance(loaded, RecordReport):
                bad.append(loaded)
                continue
            record, image, caption = loaded
            indices.append(index)
            ids.append(record.id)
            images.append(image)
            captions.append(caption)
        pixel_values = self.preprocess(images) if images else None
        text_inputs = self.tokenize(captions) if captions else {}
        return PreparedBatch(number, indices, ids, pixel_values, text_inputs, bad)

    def _load(self, index: int) -> tuple[Record, Image.Image, str] | RecordReport:
        raw = self.records.raw(index)
        try:
            record = Record.from_raw(raw, index, self.records.level_field)
        except RecordFormatError as err:
            return self._report(index, raw, err.problems)
        caption = caption_of(record)
        if caption is None:
            return self._report(index, raw, [Problem(ProblemKind.MISSING_CAPTION, "no non-empty 'gpt' turn to score")])
        assert record.image is not None
        try:
            image = load_image(
                self.image_root,
                record.image,
                max_pixels=self.max_pixels,
                allow_symlink_escape=self.allow_symlink_escape,
            )
        except ImageLoadError as err:
            return self._report(index, raw, [Problem(err.kind, str(err))])
        return record, image, caption

    def _report(self, index: int, raw: Any, problems: list[Problem]) -> RecordReport:
        rid = raw.get("id") if isinstance(raw, dict) else None
        return RecordReport(
            index=index,
            id=None if rid is None else str(rid),
            file=str(self.records.path),
            line=self.records.line_of(index),
            problems=tuple(problems),
        )
