"""Per-record checks of LLaVA-format data and the ``on_bad_record`` policy ("error" or "skip").

Two ways to use it:

* one shot over a file: ``validate_records(records, validator, on_bad_record=..., report_path=...)``;
* lazily, one record at a time (what a training dataset does): ``BadRecordPolicy(validator,
  ...).admit(records, i)`` returns the parsed ``Record`` or ``None`` (skipped), or raises ``BadRecordError``.

Every problem message names the file, line, record index and id.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aligngpt.data.constants import DEFAULT_MAX_PIXELS, DEFAULT_NUM_LEVELS, ON_BAD_RECORD, STAGES, Stage
from aligngpt.data.images import ImageLoadError, load_image
from aligngpt.data.problems import Problem, ProblemKind, RecordFormatError
from aligngpt.data.records import GPT, HUMAN, Record, RecordFile
from aligngpt.errors import UserError
from aligngpt.fileio import JsonlAppender, atomic_write, read_jsonl_log, write_jsonl_atomic
from aligngpt.prompts import IMAGE_TOKEN

OnBadRecord = Literal["error", "skip"]
_POOL_CHUNK = 32


@dataclass
class ValidationConfig:
    """What to check.

    ``image_root=None`` skips the image-file checks. ``stage="pretrain"`` requires a level on every record and
    no text-only records (docs/data.md). ``length_of(record)`` (e.g. from the processor) gives the token
    length after image expansion; records longer than ``model_max_length`` are reported, and an exception
    raised by ``length_of`` (e.g. a loss mask that cannot be built, docs/data.md) is reported as
    ``length_error``.
    """

    image_root: Path | None = None
    stage: Stage | None = None
    num_levels: int = DEFAULT_NUM_LEVELS
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    decode_images: bool = True
    image_token: str = IMAGE_TOKEN
    model_max_length: int | None = None
    length_of: Callable[[Record], int] | None = None
    allow_symlink_escape: bool = False

    def __post_init__(self) -> None:
        if self.stage is not None and self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; expected one of {', '.join(STAGES)}")
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {self.num_levels}")


@dataclass(frozen=True)
class RecordReport:
    """All problems of one bad record, with where it is."""

    index: int
    id: str | None
    file: str
    line: int | None
    problems: tuple[Problem, ...]

    def where(self) -> str:
        place = f"{self.file}:{self.line}" if self.line is not None else self.file
        rid = f"id {self.id!r}" if self.id is not None else "no id"
        return f"{place}: record {self.index} ({rid})"

    def describe(self) -> str:
        """One line per problem: ``file:line: record i (id 'x'): kind: message``."""
        return "\n".join(f"{self.where()}: {p.kind.value}: {p.message}" for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "file": self.file,
            "line": self.line,
            "problems": [p.to_json() for p in self.problems],
        }


class BadRecordError(UserError, ValueError):
    """Raised by the "error" policy on the first bad record.

    ``report`` is ``None`` when the error was rebuilt from its message alone (a DataLoader worker's error is
    re-raised in the main process as ``BadRecordError(message)``).
    """

    def __init__(self, report: RecordReport | str):
        self.report = report if isinstance(report, RecordReport) else None
        super().__init__(report if isinstance(report, str) else report.describe())


class RecordValidator:
    """Checks one record at a time; stateless apart from its configuration."""

    def __init__(self, config: ValidationConfig):
        self.config = config

    def check(self, record: Record) -> list[Problem]:
        """Problems of an already parsed record (empty list = good)."""
        cfg = self.config
        problems = self._check_conversation(record)
        problems += self._check_image_tokens(record)
        problems += self._check_level(record)
        if record.has_image and cfg.image_root is not None:
            problems += self._check_image_file(record.image)
        if not problems and cfg.length_of is not None and cfg.model_max_length is not None:
            problems += self._check_length(record)
        return problems

    def check_index(self, records: RecordFile, index: int) -> tuple[Record | None, RecordReport | None]:
        """Parse and check record ``index`` of ``records``; returns ``(record, None)`` or ``(maybe record,
        report)``."""
        raw = records.raw(index)
        record: Record | None = None
        try:
            record = Record.from_raw(raw, index, records.level_field)
            problems = self.check(record)
        except RecordFormatError as err:
            problems = err.problems
        if not problems:
            return record, None
        rid = raw.get("id") if isinstance(raw, dict) else None
        report = RecordReport(
            index=index,
            id=None if rid is None else str(rid),
            file=str(records.path),
            line=records.line_of(index),
            problems=tuple(problems),
        )
        return record, report

    # -- individual checks --------------------------------------------------------------------------

    def _check_conversation(self, record: Record) -> list[Problem]:
        turns = record.conversations
        if not turns:
            return [Problem(ProblemKind.EMPTY_CONVERSATION, "conversation has no turns")]
        problems = []
        for t, message in enumerate(turns):
            expected = HUMAN if t % 2 == 0 else GPT
            if message.role != expected:
                problems.append(
                    Problem(
                        ProblemKind.BAD_ROLES,
                        f"turn {t} is from {message.role!r}, expected {expected!r} "
                        f"(turns must alternate human/gpt, starting with human)",
                    )
                )
                break
        if turns[-1].role == HUMAN:
            problems.append(Problem(ProblemKind.BAD_ROLES, "last turn is from 'human'; there is no answer to learn"))
        for t, message in enumerate(turns):
            if not message.value.strip():
                problems.append(Problem(ProblemKind.EMPTY_VALUE, f"turn {t} ({message.role}) has an empty value"))
        return problems

    def _check_image_tokens(self, record: Record) -> list[Problem]:
        token = self.config.image_token
        counts = [m.value.count(token) for m in record.conversations]
        total = sum(counts)
        if not record.has_image:
            if total:
                return [Problem(ProblemKind.IMAGE_TOKEN_IN_TEXT_ONLY, f"text-only record contains {total} × {token}")]
            return (
                []
                if self.config.stage != "pretrain"
                else [
                    Problem(
                        ProblemKind.TEXT_ONLY_IN_PRETRAIN,
                        "pre-training data must have an image in every record",
                    )
                ]
            )
        problems = []
        if total == 0:
            problems.append(Problem(ProblemKind.NO_IMAGE_TOKEN, f"record has an image but no {token} in its turns"))
        elif total > 1:
            problems.append(
                Problem(
                    ProblemKind.MULTIPLE_IMAGE_TOKENS,
                    f"{token} appears {total} times; exactly one is supported",
                )
            )
        answer_turns = [
            t for t, (m, c) in enumerate(zip(record.conversations, counts, strict=True)) if c and m.role == GPT
        ]
        if answer_turns:
            problems.append(
                Problem(ProblemKind.IMAGE_TOKEN_IN_ANSWER, f"{token} appears in answer turn(s) {answer_turns}")
            )
        return problems

    def _check_level(self, record: Record) -> list[Problem]:
        cfg = self.config
        value = record.raw.get(record.level_field)
        if value is None:
            if cfg.stage == "pretrain" and record.has_image:
                return [Problem(ProblemKind.MISSING_LEVEL, "pre-training record has no alignment level")]
            return []
        if not isinstance(value, int) or isinstance(value, bool):
            return [Problem(ProblemKind.LEVEL_NOT_INTEGER, f"alignment level {value!r} is not an integer")]
        if not 0 <= value < cfg.num_levels:
            return [
                Problem(
                    ProblemKind.LEVEL_OUT_OF_RANGE,
                    f"alignment level {value} is outside 0..{cfg.num_levels - 1}",
                )
            ]
        return []

    def _check_image_file(self, image: str | None) -> list[Problem]:
        cfg = self.config
        assert cfg.image_root is not None and image is not None
        try:
            loaded = load_image(
                cfg.image_root,
                image,
                max_pixels=cfg.max_pixels,
                decode=cfg.decode_images,
                allow_symlink_escape=cfg.allow_symlink_escape,
            )
            loaded.close()
        except ImageLoadError as err:
            return [Problem(err.kind, str(err))]
        return []

    def _check_length(self, record: Record) -> list[Problem]:
        cfg = self.config
        assert cfg.length_of is not None and cfg.model_max_length is not None
        try:
            length = cfg.length_of(record)
        except Exception as err:
            return [Problem(ProblemKind.LENGTH_ERROR, f"cannot compute the token length: {type(err).__name__}: {err}")]
        if length > cfg.model_max_length:
            return [
                Problem(
                    ProblemKind.TOO_LONG,
                    f"{length} tokens after image expansion, above model_max_length {cfg.model_max_length}",
                )
            ]
        return []


class BadRecordPolicy:
    """Lazy, per-record application of ``on_bad_record`` (for datasets that check records as they load them).

    ``admit(records, i)`` returns the parsed record when it is good. A bad record raises ``BadRecordError``
    under "error"; under "skip" it is counted, appended to ``report_path`` (one JSON line, written with a
    single ``O_APPEND`` write so DataLoader workers and ranks can share the file) and ``None`` is returned. Each
    index is reported once per process; :meth:`finish_report` merges what every process wrote into one report.
    """

    def __init__(
        self,
        validator: RecordValidator,
        on_bad_record: OnBadRecord = "error",
        report_path: str | os.PathLike[str] | None = None,
    ):
        if on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"on_bad_record must be one of {', '.join(ON_BAD_RECORD)}, got {on_bad_record!r}")
        self.validator = validator
        self.on_bad_record = on_bad_record
        self.report_path = Path(report_path) if report_path is not None else None
        self.counts: Counter[str] = Counter()
        self._reported: set[int] = set()

    @property
    def skipped(self) -> int:
        """Records skipped by this process (workers count their own: see :meth:`finish_report`)."""
        return len(self._reported)

    def start_report(self) -> None:
        """Begin a new run's report: drop the lines an earlier run left in ``report_path``."""
        if self.report_path is not None:
            self.report_path.unlink(missing_ok=True)

    def finish_report(self) -> int:
        """Rewrite ``report_path`` with one line per skipped record (by index, however many processes or epochs
        reported it) and return how many records were skipped in all; without a file, this process's count."""
        if self.report_path is None or not self.report_path.is_file():
            return self.skipped
        by_index: dict[int, dict[str, Any]] = {}
        for report in read_jsonl_log(self.report_path).records:
            if isinstance(report, dict) and isinstance(report.get("index"), int):
                by_index.setdefault(report["index"], report)
        write_jsonl_atomic(self.report_path, (by_index[i] for i in sorted(by_index)))
        return len(by_index)

    def admit(self, records: RecordFile, index: int) -> Record | None:
        record, report = self.validator.check_index(records, index)
        if report is None:
            return record
        if self.on_bad_record == "error":
            raise BadRecordError(report)
        if index not in self._reported:
            self._reported.add(index)
            self.counts.update(p.kind.value for p in report.problems)
            if self.report_path is not None:
                with JsonlAppender(self.report_path) as log:  # one write per line: workers may share the file
                    log.write(report.to_json())
        return None


@dataclass
class ValidationResult:
    """Outcome of a one-shot pass: good indices (in order), bad records' reports, counts per problem kind."""

    total: int
    good_indices: array = field(default_factory=lambda: array("q"))
    bad: list[RecordReport] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    def summary(self) -> str:
        lines = [f"{self.total} records checked: {self.total - self.num_bad} good, {self.num_bad} bad"]
        lines += [f"  {kind}: {n}" for kind, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        return "\n".join(lines)


def validate_records(
    records: RecordFile,
    validator: RecordValidator,
    *,
    on_bad_record: OnBadRecord = "error",
    report_path: str | os.PathLike[str] | None = None,
    workers: int = 0,
    progress: bool = True,
    on_bad: Callable[[RecordReport], None] | None = None,
) -> ValidationResult:
    """Check every record once.

    "error" raises ``BadRecordError`` at the first bad record (in file order); "skip" collects all of them,
    calls ``on_bad`` for each as it is found and writes the JSONL report atomically at the end. ``workers >
    0`` checks records in that many processes (the validator must be picklable; results stay in file order).
    """
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {', '.join(ON_BAD_RECORD)}, got {on_bad_record!r}")
    result = ValidationResult(total=len(records))
    for index, report in _checked(records, validator, workers, progress):
        if report is None:
            result.good_indices.append(index)
            continue
        if on_bad_record == "error":
            raise BadRecordError(report)
        result.bad.append(report)
        result.counts.update(p.kind.value for p in report.problems)
        if on_bad is not None:
            on_bad(report)
    if report_path is not None:
        with atomic_write(report_path) as f:
            for report in result.bad:
                f.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
    return result


_WORKER_STATE: dict[str, Any] = {}


def _init_worker(records: RecordFile, validator: RecordValidator) -> None:
    _WORKER_STATE["records"], _WORKER_STATE["validator"] = records, validator


def _check_in_worker(index: int) -> tuple[int, RecordReport | None]:
    return index, _WORKER_STATE["validator"].check_index(_WORKER_STATE["records"], index)[1]


def _checked(
    records: RecordFile, validator: RecordValidator, workers: int, progress: bool
) -> Iterator[tuple[int, RecordReport | None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(records), desc="checking records", unit="rec", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 0:
            for index in range(len(records)):
                yield index, validator.check_index(records, index)[1]
                bar.update()
            return
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(records, validator)) as pool:
            for item in pool.imap(_check_in_worker, range(len(records)), chunksize=_POOL_CHUNK):
                yield item
                bar.update()
    finally:
        bar.close()
