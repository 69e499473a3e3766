"""Batch prediction over a LLaVA-style question file (the engine behind ``aligngpt predict``).

Question lines: ``{"question_id": ..., "image": "name.jpg", "text": "..."}`` (``image`` may be absent for text-only
questions). Answer lines: ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata",
"alignment_weights", "level_coefficients"}``.

Resumable: answers are appended to ``<out>.partial`` (one flushed line per answer) while the run lasts; a rerun cuts
a torn last line off it, skips ids answered there or in an existing ``<out>``, and appends the rest. When the
partial file then holds exactly the answers in question order it is renamed to ``<out>``, so a rerun after a full
disk needs room for the new answers only; otherwise (a changed question file, answers taken from an older ``<out>``)
``<out>`` is rewritten atomically in question order.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from aligngpt.errors import writing
from aligngpt.fileio import JsonlLog, atomic_write, cut_torn_tail, read_jsonl_log, replace_durably
from aligngpt.inference.images import ImageError, ImagePolicy, read_local_image
from aligngpt.inference.pipeline import AlignGPTPipeline, GenerationSettings

ANSWER_ID_NAMESPACE = uuid.UUID("8a0e4a44-5b0e-4d5e-9d9c-6a1f4f1c2b3d")
PARTIAL_SUFFIX = ".partial"
_MISSING_SHOWN = 5


@dataclass
class Question:
    question_id: str | int
    text: str
    image: str | None
    line: int

    @property
    def key(self) -> str:
        return id_key(self.question_id)


@dataclass
class PredictSummary:
    total: int
    answered_now: int
    already_answered: int


def id_key(question_id) -> str:
    """A hashable key that keeps ``1`` and ``"1"`` apart."""
    return json.dumps(question_id)


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
            key = id_key(qid)
            if key in seen:
                raise ValueError(f"{where}: question_id {qid!r} repeats line {seen[key]}")
            seen[key] = number
            questions.append(Question(qid, text, image, number))
    return questions


def read_answers(log: JsonlLog) -> list[dict]:
    """The answer records of an answer file read with :func:`read_jsonl_log` (a torn last line is never one).

    A damaged line in the middle is an error naming the file and line.
    """
    if log.bad_lines:
        raise ValueError(f"{log.path}:{log.bad_lines[0]}: not valid JSON; fix or delete the file")
    for record in log.records:
        if not isinstance(record, dict) or "question_id" not in record:
            raise ValueError(f"{log.path}: a line is not an answer record (no 'question_id'); fix or delete the file")
    return log.records


def answer_id(model_id: str, question_id) -> str:
    """Deterministic per (model, question), so reruns give identical files."""
    return uuid.uuid5(ANSWER_ID_NAMESPACE, f"{model_id}\n{id_key(question_id)}").hex


def _check_images(questions: Sequence[Question], images_dir: Path | None) -> None:
    needing = [q for q in questions if q.image is not None]
    if needing and images_dir is None:
        raise ValueError(f"question on line {needing[0].line} names image {needing[0].image!r}: pass --images DIR")
    missing = [q for q in needing if not (images_dir / q.image).is_file()]
    if missing:
        shown = ", ".join(f"line {q.line}: {q.image}" for q in missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise FileNotFoundError(f"{len(missing)} image(s) not found under {images_dir}: {shown}{more}")


def _load_question_image(question: Question, images_dir: Path | None, policy: ImagePolicy, source) -> object:
    if question.image is None:
        return None
    try:
        return read_local_image(images_dir / question.image, policy)
    except ImageError as err:
        raise ValueError(f"{source}:{question.line}: {err}") from err


def _record(question: Question, answer, model_id: str, metadata: dict) -> dict:
    return {
        "question_id": question.question_id,
        "prompt": question.text,
        "text": answer.text,
        "answer_id": answer_id(model_id, question.question_id),
        "model_id": model_id,
        "metadata": metadata,
        "alignment_weights": answer.alignment_weights,
        "level_coefficients": answer.level_coefficients,
    }


def predict_file(
    pipeline: AlignGPTPipeline,
    questions_path: str | os.PathLike,
    out_path: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    settings: GenerationSettings | None = None,
    batch_size: int = 8,
    model_id: str = "aligngpt",
    progress: bool = True,
) -> PredictSummary:
    """Answer every question not answered yet; returns counts. See the module docstring for the file formats."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    settings = settings or GenerationSettings(max_new_tokens=128)
    out = Path(out_path)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    images = Path(images_dir) if images_dir is not None else None
    questions = read_questions(questions_path)
    partial_log = read_jsonl_log(partial)
    cut_torn_tail(partial_log)  # appending below must not glue an answer onto a torn line
    partial_keys = [id_key(r["question_id"]) for r in read_answers(partial_log)]
    finished = read_answers(read_jsonl_log(out))
    done = {id_key(r["question_id"]): r for r in finished + partial_log.records}
    done = {q.key: done[q.key] for q in questions if q.key in done}
    todo = [q for q in questions if q.key not in done]
    _check_images(todo, images)
    metadata = {
        "template": pipeline.template.name,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
    }
    policy = ImagePolicy()
    if todo:
        with (
            writing(partial),
            open(partial, "a", encoding="utf-8") as f,
            tqdm(total=len(todo), unit="q", disable=not progress) as bar,
        ):
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                loaded = [_load_question_image(q, images, policy, questions_path) for q in chunk]
                answers = pipeline.generate_batch(list(zip(loaded, [q.text for q in chunk])), settings)
                for question, answer in zip(chunk, answers):
                    record = _record(question, answer, model_id, metadata)
                    done[question.key] = record
                    partial_keys.append(question.key)
                    f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(chunk))
    _publish(out, partial, partial_keys, finished, [done[q.key] for q in questions])
    return PredictSummary(len(questions), len(todo), len(questions) - len(todo))


def _publish(out: Path, partial: Path, partial_keys: list[str], finished: list[dict], answers: list[dict]) -> None:
    """Make ``out`` hold ``answers`` (question order) with the least writing: rename the partial file when it is
    exactly that, keep ``out`` when it already is (``finished``), else rewrite ``out`` atomically. The partial
    file is gone afterwards."""
    if partial.is_file() and partial_keys == [id_key(a["question_id"]) for a in answers]:
        replace_durably(partial, out)
        return
    if not partial.is_file() and finished == answers:
        return
    with atomic_write(out) as f:
        f.writelines(json.dumps(answer) + "\n" for answer in answers)
    partial.unlink(missing_ok=True)
