"""Batch prediction over a LLaVA-style question file (``aligngpt predict``), through the answer engine.

Question lines: ``{"question_id": ..., "image": "name.jpg", "text": "..."}`` (``image`` may be absent for text-only
questions). Answer lines, the partial file, the run record and the resume rule are those of
:mod:`aligngpt.inference.answers`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from aligngpt.inference.answers import (
    AnswerSummary,
    AnswerTask,
    answer_key,
    answer_tasks,
    model_digest,
    run_identity,
)
from aligngpt.inference.images import ImageError, ImagePolicy, read_local_image
from aligngpt.inference.pipeline import AlignGPTPipeline, GenerationSettings

_MISSING_SHOWN = 5


@dataclass
class Question:
    question_id: str | int
    text: str
    image: str | None
    line: int


def read_questions(path: str | os.PathLike) -> list[Question]:
    """Parse and check a question file; errors name the file, line and field."""
    questions, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object")
            qid = record.get("question_id")
            if not isinstance(qid, (str, int)) or isinstance(qid, bool):
                raise ValueError(f"{where}: field 'question_id' must be a string or an integer")
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: field 'text' must be a non-empty string")
            image = record.get("image")
            if image is not None and not isinstance(image, str):
                raise ValueError(f"{where}: field 'image' must be a string (a file name under --images)")
            key = answer_key(qid)
            if key in seen:
                raise ValueError(f"{where}: question_id {qid!r} repeats line {seen[key]}")
            seen[key] = number
            questions.append(Question(qid, text, image, number))
    return questions


def _check_images(questions: Sequence[Question], images_dir: Path | None) -> None:
    needing = [q for q in questions if q.image is not None]
    if needing and images_dir is None:
        raise ValueError(f"question on line {needing[0].line} names image {needing[0].image!r}: pass --images DIR")
    missing = [q for q in needing if not (images_dir / q.image).is_file()]
    if missing:
        shown = ", ".join(f"line {q.line}: {q.image}" for q in missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise FileNotFoundError(f"{len(missing)} image(s) not found under {images_dir}: {shown}{more}")


def _load_question_image(question: Question, images_dir: Path, policy: ImagePolicy, source) -> object:
    try:
        return read_local_image(images_dir / question.image, policy)
    except ImageError as err:
        raise ValueError(f"{source}:{question.line}: {err}") from err


def predict_file(
    pipeline: AlignGPTPipeline,
    questions_path: str | os.PathLike,
    out_path: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    model_id: str = "aligngpt",
    progress: bool = True,
    model: str | os.PathLike | None = None,
) -> AnswerSummary:
    """Answer every question not answered yet; returns counts. ``model``: the folder ``pipeline`` was loaded from
    (recorded, with its checksum, in the run record)."""
    settings = settings or GenerationSettings(max_new_tokens=128)
    images = Path(images_dir) if images_dir is not None else None
    questions = read_questions(questions_path)
    _check_images(questions, images)
    policy = ImagePolicy()
    tasks = [
        AnswerTask(
            q.question_id,
            q.text,
            None if q.image is None else partial(_load_question_image, q, images, policy, questions_path),
        )
        for q in questions
    ]
    digest = None if model is None else model_digest(model)
    identity = run_identity(model, digest, model_id, pipeline.template.name, settings)
    return answer_tasks(pipeline, tasks, out_path, settings, identity, batch_size=batch_size, progress=progress)
