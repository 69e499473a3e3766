"""The unit of evaluation work: one question, its image and the full user-message text."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngpt.fileio import BadRecordError
from aligngpt.inference.answers import AnswerTask


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

    def open_image(self):
        """The item's image in RGB, converted as in training (``None`` for text-only items).

        Raises ``FileNotFoundError`` naming the path when the image file is missing and ``BadRecordError`` naming
        the question when it cannot be decoded (damaged base64 included).
        """
        from aligngpt.data.images import ImageLoadError, ImageNotFoundError, decode_rgb, open_image

        try:
            if "image_base64" in self.meta:
                name = f"of question {self.question_id!r}"
                source = io.BytesIO(base64.b64decode(self.meta["image_base64"]))
            elif self.image is None:
                return None
            else:
                source, name = Path(self.image), str(self.image)
            return decode_rgb(open_image(source, name=name), name)
        except binascii.Error as err:
            raise BadRecordError(f"question {self.question_id!r}: its base64 image is damaged ({err})") from None
        except ImageNotFoundError:
            raise FileNotFoundError(f"image for question {self.question_id!r} not found: {self.image}") from None
        except ImageLoadError as err:
            raise BadRecordError(f"question {self.question_id!r}: {err}") from None

    def task(self) -> AnswerTask:
        """The item as a question of the answer engine; its answer line is the one the official scripts write
        (``meta["answer_fields"]``: the recorded prompt and the extra fields, in order)."""
        fields = dict(self.meta.get("answer_fields", {"prompt": self.prompt}))
        prompt = fields.pop("prompt", self.prompt)
        return AnswerTask(self.question_id, self.prompt, self.open_image if self.has_image else None, prompt, fields)
