"""Common interface of the benchmark modules."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from aligngpt.evaluation.io import find_file, pick_dir
from aligngpt.evaluation.items import EvalItem
from aligngpt.evaluation.judge import CachedJudge, Judge
from aligngpt.fileio import read_jsonl, write_json_atomic

MULTIPLE_CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."
MULTIPLE_CHOICE_SUFFIX_CN = "请直接回答选项字母。"

LOADER_MAX_NEW_TOKENS = 128  # model_vqa_loader (docs/evaluation.md)
LONG_MAX_NEW_TOKENS = 1024  # model_vqa, model_vqa_science, model_vqa_mmbench


class Benchmark(ABC):
    """One benchmark: loader, generation settings, official post-processing, metric and submission files.

    Subclasses set the class attributes and implement :meth:`load` and :meth:`_score`. Options that switch
    between the official behaviour and a corrected one are constructor keywords (official by default).

    Args:
        only_predicted: score only the questions that have a prediction (for ``--limit`` smoke runs); the
            official scorers require every question, so this is off by default.
        judge_cache_dir: where GPT-judge replies are cached (default ``<out_dir>/judge_cache``).
    """

    name: ClassVar[str]
    folder: ClassVar[str]  # the benchmark's sub-folder of LLaVA's ``playground/data/eval``
    aliases: ClassVar[tuple[str, ...]] = ()
    max_new_tokens: ClassVar[int]
    image_aspect_ratio: ClassVar[str]  # "pad" (pad to square first) or "square" (processor only)
    judge_model: ClassVar[str | None] = None  # official judge model of GPT-judged benchmarks
    headline_key: ClassVar[str]  # the metrics.json key of the number reported in paper tables

    def __init__(self, *, only_predicted: bool = False, judge_cache_dir: Path | None = None) -> None:
        self.only_predicted = only_predicted
        self.judge_cache_dir = judge_cache_dir

    @abstractmethod
    def load(self, data_dir: Path) -> list[EvalItem]:
        """Items of the benchmark's question file under ``data_dir`` (official LLaVA eval layout)."""

    def score(
        self, data_dir: Path, predictions_path: Path, out_dir: Path, judge: Judge | None = None
    ) -> dict[str, Any]:
        """Re-score an answer file; writes ``out_dir/metrics.json`` plus submission/per-item files."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.judge_model is not None:  # cache-backed; without a judge only cached replies can be used
            judge = CachedJudge(judge, Path(self.judge_cache_dir or out_dir / "judge_cache"))
        metrics = self._score(Path(data_dir), Path(predictions_path), out_dir, judge)
        metrics = {"benchmark": self.name, "headline": metrics.get(self.headline_key), **metrics}
        write_json_atomic(out_dir / "metrics.json", metrics)
        return metrics

    def limit_items(self, items: list[EvalItem], limit: int) -> list[EvalItem]:
        """The items a ``--limit`` smoke run keeps: the first ``limit``."""
        return items[:limit]

    @abstractmethod
    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge: Judge | None) -> dict:
        """Compute the metrics dict (and write any extra files to ``out_dir``)."""


class LoaderBenchmark(Benchmark):
    """Benchmarks run through ``model_vqa_loader``/``model_vqa``: a JSONL question file of
    ``{"question_id", "image", "text", "category"}`` whose ``text`` already holds the answer-format suffix."""

    question_files: ClassVar[tuple[str, ...]]
    image_dirs: ClassVar[tuple[str, ...]]
    max_new_tokens = LOADER_MAX_NEW_TOKENS
    image_aspect_ratio = "pad"

    def question_file(self, data_dir: Path) -> Path:
        return find_file(data_dir, self.question_files, f"{self.name} question file")

    def load(self, data_dir: Path) -> list[EvalItem]:
        data_dir = Path(data_dir)
        path = self.question_file(data_dir)
        image_dir = pick_dir(data_dir, self.image_dirs)
        items = []
        for line_no, q in enumerate(read_jsonl(path), start=1):
            missing = [k for k in ("question_id", "image", "text") if k not in q]
            if missing:
                raise ValueError(f"{path}:{line_no}: question has no {', '.join(missing)}")
            meta = {k: v for k, v in q.items() if k not in ("question_id", "image", "text")}
            meta["answer_fields"] = {"prompt": q["text"]}
            items.append(EvalItem(q["question_id"], image_dir / q["image"], q["text"], meta))
        return items


def ratio(num: float, den: float) -> float | None:
    """``num / den`` or ``None`` when the denominator is zero (where the official code divides by zero)."""
    return num / den if den else None
