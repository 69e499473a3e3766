"""Resumable answer files: the one engine behind ``aligngpt predict`` and ``aligngpt eval``.

An answer file holds one JSON line per question, in question order, in the official answer-file shape::

    {"question_id", ["round_id"], "prompt", "text", [the benchmark's extra fields], "answer_id", "model_id",
     "metadata": {"template", "temperature", "top_p", "max_new_tokens", "alignment_weights", "level_coefficients"}}

A question is keyed by its id (``1`` and ``"1"`` are two questions) and, for multi-round benchmarks, its round;
``answer_id`` is derived from the model id and that key, so a rerun writes the same bytes.

The run: answers are appended to ``<out>.partial`` (flushed and fsynced per batch); ``<out>.run.json`` records the
model and settings (the run record). When every question is answered the partial file is renamed to ``<out>`` (or,
when answers also came from an earlier ``<out>``, ``<out>`` is rewritten atomically in question order), so ``<out>``
only ever appears complete.

The resume rule: a rerun keeps every answer it can trust and answers the rest, in the batches of an uninterrupted
run with the same ``batch_size``, so a resumed file equals an uninterrupted one byte for byte. A torn last line of
the partial file (a kill or a full disk before its newline) is cut off and redone, even when it parses; a damaged
complete line is dropped with a warning and redone. A rerun whose model or settings differ from the run record, or
whose questions differ from those the kept answers were written for, is refused with a message that says what
changed.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligngpt.data.digest import file_digest
from aligngpt.errors import UserError, writing
from aligngpt.fileio import atomic_write, cut_torn_tail, jsonl_line, read_jsonl_log, replace_durably, write_json_atomic

logger = logging.getLogger(__name__)

ANSWER_ID_NAMESPACE = uuid.UUID("8a0e4a44-5b0e-4d5e-9d9c-6a1f4f1c2b3d")
PARTIAL_SUFFIX = ".partial"
RUN_RECORD_SUFFIX = ".run.json"
# Fields of an answer line that the model writes; every other field must match the question it answers.
GENERATED_FIELDS = ("text", "metadata")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")
_SHOWN = 3  # examples named in a refusal


class AnswersChangedError(UserError, ValueError):
    """A rerun would mix answers of another model, other settings or other questions into an answer file."""


@dataclass(frozen=True)
class AnswerTask:
    """One question to answer.

    Attributes:
        question_id: the id written to the answer line (int or str, as in the question file).
        message: the user message sent to the model, without the image marker (the pipeline adds it).
        image: loads the question's RGB image when called; ``None`` for a text-only question.
        prompt: the answer line's ``prompt`` (default: ``message``).
        fields: the official extra fields of the answer line (``round_id`` first, then e.g. ``options``).
    """

    question_id: str | int
    message: str
    image: Callable[[], Any] | None = None
    prompt: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return answer_key(self.question_id, self.fields.get("round_id"))

    def record(self, text: str, model_id: str, metadata: Mapping[str, Any]) -> dict:
        """The answer line for ``text``."""
        extra = dict(self.fields)
        record: dict[str, Any] = {"question_id": self.question_id}
        if "round_id" in extra:
            record["round_id"] = extra.pop("round_id")
        record["prompt"] = self.message if self.prompt is None else self.prompt
        record["text"] = text
        record.update(extra)
        record["answer_id"] = answer_id(model_id, self.key)
        record["model_id"] = model_id
        record["metadata"] = dict(metadata)
        return record


@dataclass
class AnswerSummary:
    total: int
    answered_now: int
    already_answered: int


def answer_key(question_id: Any, round_id: Any = None) -> str:
    """The key of a question: its id as JSON (``1`` and ``"1"`` stay apart), with the round when there is one."""
    return json.dumps(question_id if round_id is None else [question_id, round_id])


def record_key(record: Mapping[str, Any]) -> str:
    return answer_key(record["question_id"], record.get("round_id"))


def answer_id(model_id: str, key: str) -> str:
    """Deterministic per (model, question key), so reruns give identical files."""
    return uuid.uuid5(ANSWER_ID_NAMESPACE, f"{model_id}\n{key}").hex


def partial_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def run_record_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.stem + RUN_RECORD_SUFFIX)


def model_digest(model: str | os.PathLike) -> str | None:
    """SHA-256 of a model folder's weight and configuration files (``None`` for a hub id)."""
    folder = Path(model)
    files = [p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()] if folder.is_dir() else []
    return file_digest(files) if files else None


def run_identity(
    model: str | os.PathLike | None, model_sha256: str | None, model_id: str, template: str, settings, **extra: Any
) -> dict:
    """What the run record holds: the model (path and :func:`model_digest`), the template, the decoding settings
    and ``extra`` (e.g. the image aspect ratio and benchmark options). ``settings``: a ``GenerationSettings``."""
    return {
        "model": None if model is None else str(model),
        "model_sha256": model_sha256,
        "model_id": model_id,
        "template": template,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "stop": list(settings.stop),
        **extra,
    }


def read_answers(path: str | os.PathLike) -> list[dict]:
    """The answer records of an answer file (complete lines only; a missing file reads as empty)."""
    log = read_jsonl_log(path)
    return [r for r in log.records if isinstance(r, dict) and "question_id" in r]


def _kept_records(path: Path, *, cut_tail: bool) -> list[dict]:
    """The trustworthy answer lines of ``path``; damaged lines are dropped from the file (rewritten atomically)."""
    log = read_jsonl_log(path)
    if cut_tail:
        cut_torn_tail(log)  # appending below must not glue an answer onto a torn line
    records = [r for r in log.records if isinstance(r, dict) and "question_id" in r]
    damaged = len(log.bad_lines) + len(log.records) - len(records) + (1 if log.tail.strip() else 0)
    if damaged:
        logger.warning("%s: %d damaged line(s) dropped (not answer records); their answers are redone", path, damaged)
        with atomic_write(path) as f:
            f.writelines(jsonl_line(r) for r in records)
    return records


def _changes(recorded: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
    names = sorted(set(recorded) | set(identity))
    return "; ".join(
        f"{name}: {recorded.get(name)!r} -> {identity.get(name)!r}"
        for name in names
        if recorded.get(name) != identity.get(name)
    )


def _check_identity(out: Path, identity: dict) -> None:
    """Refuse to resume answers of another model or other settings; record ``identity`` for a new run."""
    run_file = run_record_path(out)
    recorded = json.loads(run_file.read_text()) if run_file.is_file() else None
    started = out.is_file() or partial_path(out).is_file()
    if started and recorded is None:
        raise AnswersChangedError(
            f"{out}: no run record ({run_file.name}) says which model and settings wrote these answers; "
            "delete them or choose another output"
        )
    if started and recorded != identity:
        raise AnswersChangedError(
            f"{out} was written by another model or other settings ({_changes(recorded, identity)}); "
            "delete it (and its .partial / .run.json files) or choose another output"
        )
    if recorded != identity:
        write_json_atomic(run_file, identity)


def _check_questions(out: Path, kept: Iterable[dict], tasks: Mapping[str, AnswerTask], model_id: str) -> None:
    """Every kept answer must answer one of ``tasks`` exactly as its line would be written now."""
    unasked, changed = [], []
    for record in kept:
        task = tasks.get(record_key(record))
        if task is None:
            unasked.append(record["question_id"])
            continue
        expected = task.record(record.get("text", ""), model_id, {})
        names = [k for k in dict.fromkeys([*expected, *record]) if k not in GENERATED_FIELDS]
        different = [k for k in names if expected.get(k) != record.get(k)]
        if different:
            changed.append(f"question {record['question_id']!r} ({', '.join(different)})")
    if unasked:
        shown = ", ".join(repr(q) for q in unasked[:_SHOWN])
        raise AnswersChangedError(
            f"{out} holds answers to {len(unasked)} question(s) this run does not ask (e.g. {shown}); "
            "delete it or choose another output"
        )
    if changed:
        raise AnswersChangedError(
            f"{out}: {len(changed)} question(s) changed since they were answered: {'; '.join(changed[:_SHOWN])}; "
            "delete it or choose another output"
        )


def answer_tasks(
    pipeline,
    tasks: Sequence[AnswerTask],
    out: str | os.PathLike,
    settings,
    identity: dict,
    *,
    batch_size: int = 8,
    aspect_ratio: str | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> AnswerSummary:
    """Answer every task not answered yet into ``out`` (see the module docstring); returns the counts.

    Args:
        pipeline: an :class:`~aligngpt.inference.pipeline.AlignGPTPipeline`.
        settings: the ``GenerationSettings`` every answer is generated with.
        identity: the run record (:func:`run_identity`); ``identity["model_id"]`` is written to every line.
        aspect_ratio: override the processor's image padding (benchmarks that evaluate without it).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    by_key: dict[str, AnswerTask] = {}
    for task in tasks:
        if task.key in by_key:
            raise ValueError(f"question {task.question_id!r} is asked twice")
        by_key[task.key] = task
    out, model_id = Path(out), identity["model_id"]
    partial = partial_path(out)
    _check_identity(out, identity)
    in_partial = _kept_records(partial, cut_tail=True)
    finished = _kept_records(out, cut_tail=False)
    _check_questions(out, [*finished, *in_partial], by_key, model_id)
    done = {record_key(r): r for r in [*finished, *in_partial]}
    partial_keys = [record_key(r) for r in in_partial]
    todo = [task for task in tasks if task.key not in done]
    metadata = {key: identity[key] for key in ("template", "temperature", "top_p", "max_new_tokens")}
    if todo:
        out.parent.mkdir(parents=True, exist_ok=True)
        with (
            writing(partial),
            open(partial, "a", encoding="utf-8") as handle,
            tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=desc, unit="q", disable=not progress) as bar,
        ):
            for chunk in _batches_to_answer(tasks, done, batch_size):
                requests = [(None if t.image is None else t.image(), t.message) for t in chunk]
                answers = pipeline.generate_batch(requests, settings, aspect_ratio=aspect_ratio)
                new = [(task, answer) for task, answer in zip(chunk, answers) if task.key not in done]
                for task, answer in new:
                    extra = {"alignment_weights": answer.alignment_weights}
                    extra["level_coefficients"] = answer.level_coefficients
                    record = task.record(answer.text, model_id, {**metadata, **extra})
                    done[task.key] = record
                    partial_keys.append(task.key)
                    handle.write(jsonl_line(record))
                handle.flush()
                os.fsync(handle.fileno())
                bar.update(len(new))
    _publish(out, partial, partial_keys, finished, [done[task.key] for task in tasks])
    return AnswerSummary(len(tasks), len(todo), len(tasks) - len(todo))


def _batches_to_answer(tasks: Sequence[AnswerTask], done: Mapping[str, dict], size: int) -> Iterable[list]:
    """The question list cut into fixed batches of ``size`` (batch k: questions k*size .. k*size+size-1), those with a
    question still to answer. A resumed batch is generated whole, its answered questions included (their new answers
    are dropped), so every answer comes from the same batch as in an uninterrupted run: batched decoding pads to the
    longest prompt of the batch, and a different batch changes the gate's weights in their last float digits."""
    for start in range(0, len(tasks), size):
        chunk = list(tasks[start : start + size])
        if any(task.key not in done for task in chunk):
            yield chunk


def _publish(out: Path, partial: Path, partial_keys: list[str], finished: list[dict], answers: list[dict]) -> None:
    """Make ``out`` hold ``answers`` (question order) with the least writing: rename the partial file when it is
    exactly that, keep ``out`` when it already is (``finished``), else rewrite ``out`` atomically. The partial
    file is gone afterwards."""
    if partial.is_file() and partial_keys == [record_key(a) for a in answers]:
        replace_durably(partial, out)
        return
    if not partial.is_file() and finished == answers:
        return
    with atomic_write(out) as f:
        f.writelines(jsonl_line(answer) for answer in answers)
    partial.unlink(missing_ok=True)
