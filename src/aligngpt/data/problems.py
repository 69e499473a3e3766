"""What can be wrong with one training record, as data (kind + human message)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ProblemKind(str, Enum):
    """Stable names for record problems; used in reports and summary counts."""

    MALFORMED = "malformed"
    UNSAFE_IMAGE_PATH = "unsafe_image_path"
    MISSING_IMAGE = "missing_image"
    UNREADABLE_IMAGE = "unreadable_image"
    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_LARGE = "image_too_large"
    MULTIPLE_IMAGES = "multiple_images"
    NO_IMAGE_TOKEN = "no_image_token"
    MULTIPLE_IMAGE_TOKENS = "multiple_image_tokens"
    IMAGE_TOKEN_IN_ANSWER = "image_token_in_answer"
    IMAGE_TOKEN_IN_TEXT_ONLY = "image_token_in_text_only"
    TEXT_ONLY_IN_PRETRAIN = "text_only_in_pretrain"
    EMPTY_CONVERSATION = "empty_conversation"
    BAD_ROLES = "roles_not_alternating"
    EMPTY_VALUE = "empty_value"
    MISSING_CAPTION = "missing_caption"
    MISSING_LEVEL = "missing_level"
    LEVEL_NOT_INTEGER = "level_not_integer"
    LEVEL_OUT_OF_RANGE = "level_out_of_range"
    TOO_LONG = "too_long"
    LENGTH_ERROR = "length_error"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a record."""

    kind: ProblemKind
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind.value, "message": self.message}


class RecordFormatError(ValueError):
    """A record whose JSON shape is not a LLaVA record (raised by ``Record.from_raw``)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))
