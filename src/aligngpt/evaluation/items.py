"""The unit of evaluation work: one question, its image and the full user-message text."""

from __future__ import annotations

import base64
import binascii
import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_PLACEHOLDER = "<image>"


@dataclass
class EvalItem:
    """One benchmark question.

    Attributes:
        question_id: the id written to the answer file (int or str, as in the question file).
        image: image file path, or ``None`` for text-only questions and for images embedded in the data
            (MMBench: base64 in ``meta["image_base64"]``; use :meth:`open_image`).
        prompt: the full user message **without** the ``<image>`` placeholder (the runner prepends
            ``"<image>\\n"`` when the item has an image), including the benchmark's answer-format suffix.
        meta: benchmark-specific extras. ``meta["answer_fields"]`` holds the fields the official scripts
            write to the answer line besides ``text`` (at least ``prompt``; scoring reads them back).
    """

    question_id: Any
    image: Path | None
    prompt: str
    meta: dict = field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return self.image is not None or "image_base64" in self.meta

    def open_image(self, convert_rgb: bool = True):
        """Open the item's image as a ``PIL.Image`` (``None`` for text-only items).

        Raises ``FileNotFoundError`` naming the path when the image file is missing, and
        :class:`~aligngpt.data.images.CorruptImageError` naming the question when it cannot be decoded.
        """
        from PIL import Image

        from aligngpt.data.images import CorruptImageError, pil_error_text

        if self.image is None and "image_base64" not in self.meta:
            return None
        if self.image is not None and "image_base64" not in self.meta and not Path(self.image).exists():
            raise FileNotFoundError(f"image for question {self.question_id!r} not found: {self.image}")
        source = "its base64 image" if "image_base64" in self.meta else self.image
        try:
            if "image_base64" in self.meta:
                image = Image.open(io.BytesIO(base64.b64decode(self.meta["image_base64"])))
            else:
                image = Image.open(self.image)
            image.load()
        except (binascii.Error, OSError, SyntaxError, ValueError) as err:
            raise CorruptImageError(
                f"image of question {self.question_id!r} ({source}) cannot be decoded: {pil_error_text(err)}"
            ) from None
        return image.convert("RGB") if convert_rgb else image


def answer_record(item: EvalItem, text: str, model_id: str, answer_id: str | None = None) -> dict:
    """The answer-file line the official scripts write for ``item`` (same keys, same order)."""
    fields = dict(item.meta.get("answer_fields", {"prompt": item.prompt}))
    record: dict[str, Any] = {"question_id": item.question_id}
    if "round_id" in fields:
        record["round_id"] = fields.pop("round_id")
    record["prompt"] = fields.pop("prompt", item.prompt)
    record["text"] = text
    record.update(fields)
    record["answer_id"] = answer_id if answer_id is not None else uuid.uuid4().hex[:22]
    record["model_id"] = model_id
    record["metadata"] = {}
    return record
