"""The toy-world benchmark (``aligngpt demo``): captions (object F1, CHAIR), VQA by question type and POPE splits.

The data folder is a world written by :func:`aligngpt.toyworld.dataset.write_dataset`: question files in the LLaVA
eval style under ``eval/<set>/questions.jsonl``, ground truth beside them, images under ``images/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from aligngpt.evaluation.benchmarks.base import Benchmark
from aligngpt.evaluation.io import find_file
from aligngpt.evaluation.items import EvalItem
from aligngpt.fileio import read_jsonl

EVAL_SETS = ("caption", "vqa", "pope")


class ToyWorld(Benchmark):
    """Args: sets: which evaluation sets to load (default all three)."""

    name = "toyworld"
    folder = "toyworld"
    aliases: ClassVar[tuple[str, ...]] = ("toy",)
    max_new_tokens = 48
    image_aspect_ratio = "pad"
    headline_key = "caption_f1"

    def __init__(self, *, sets: tuple[str, ...] | list[str] = EVAL_SETS, **kwargs) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(sets) - set(EVAL_SETS))
        if unknown:
            raise ValueError(f"unknown toy-world eval sets {unknown}; known: {EVAL_SETS}")
        self.sets = tuple(sets)

    def load(self, data_dir: Path) -> list[EvalItem]:
        data_dir = Path(data_dir)
        items = []
        for name in self.sets:
            path = find_file(data_dir, (f"eval/{name}/questions.jsonl",), f"toy-world {name} question file")
            for question in read_jsonl(path):
                meta = {
                    "set": name,
                    "category": question.get("category"),
                    "answer_fields": {"prompt": question["text"]},
                }
                items.append(
                    EvalItem(question["question_id"], data_dir / "images" / question["image"], question["text"], meta)
                )
        return items

    def limit_items(self, items: list[EvalItem], limit: int) -> list[EvalItem]:
        """The first ``limit`` items of each set (not of captions + VQA + POPE combined)."""
        kept: dict[str, int] = {}
        chosen = []
        for item in items:
            name = item.meta["set"]
            if kept.get(name, 0) < limit:
                kept[name] = kept.get(name, 0) + 1
                chosen.append(item)
        return chosen

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        from aligngpt.evaluation.benchmarks.toyworld_metrics import score_eval_dir

        predictions = {str(r["question_id"]): r["text"] for r in read_jsonl(predictions_path)}
        scores = score_eval_dir(Path(data_dir) / "eval", predictions, only_predicted=self.only_predicted)
        flat: dict = {"sets": scores}
        if "caption" in scores:
            flat.update({f"caption_{k}": v for k, v in scores["caption"].items() if k != "n"})
        if "vqa" in scores:
            flat["vqa_accuracy"] = scores["vqa"]["accuracy"]
        if "pope" in scores:
            flat.update({f"pope_{split}_accuracy": s["accuracy"] for split, s in scores["pope"].items()})
            flat["pope_all_f1"] = scores["pope"]["all"]["f1"]
        return flat
