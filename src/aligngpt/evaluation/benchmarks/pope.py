"""POPE (COCO val2014; adversarial / popular / random): yes/no parsing, P/R/F1 per category (docs/evaluation.md).

Official pairing (``pair_by="position"``, the default): the i-th answer of a category, in answer-file
order, is compared with the i-th line of ``coco_pope_<category>.json`` (docs/evaluation.md).
``pair_by="question_id"`` is the corrected join: each answer's question_id is looked up in the question
file, and its rank within its category there selects the label line (identical results when the answer
file follows the question file and is complete).
"""

from __future__ import annotations

from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LoaderBenchmark, ratio
from aligngpt.evaluation.io import pick_dir, read_predictions
from aligngpt.fileio import BadRecordError, MissingDataError, read_jsonl, write_jsonl_atomic

LABEL_PREFIX, LABEL_SUFFIX = "coco_pope_", ".json"
NEGATIVE_WORDS = ("No", "not", "no")
PAIRINGS = ("position", "question_id")


def parse_yes_no(text: str) -> str:
    """Official rule: first sentence, commas removed, split on single spaces; any exact No/not/no -> no."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in NEGATIVE_WORDS for w in words) else "yes"


def binary_metrics(preds: list[str], labels: list[str]) -> dict:
    """TP/FP/TN/FN with yes = positive over zip(preds, labels); yes-ratio over all preds."""
    tp = fp = tn = fn = 0
    for pred, label in zip(preds, labels, strict=False):
        pred_yes, label_yes = pred != "no", label != "no"
        tp += pred_yes and label_yes
        fp += pred_yes and not label_yes
        tn += not pred_yes and not label_yes
        fn += not pred_yes and label_yes
    precision = ratio(float(tp), float(tp + fp))
    recall = ratio(float(tp), float(tp + fn))
    f1 = None
    if precision is not None and recall is not None and precision + recall > 0:
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "acc": ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": ratio(sum(p == "yes" for p in preds), len(preds)),
        "n": len(preds),
    }


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3f}"


class POPE(LoaderBenchmark):
    name = "pope"
    folder = "pope"
    question_files = ("llava_pope_test.jsonl",)
    image_dirs = ("val2014",)
    label_dirs = ("coco",)
    headline_key = "f1_mean"

    def __init__(self, *, pair_by: str = "position", **options) -> None:
        super().__init__(**options)
        if pair_by not in PAIRINGS:
            raise ValueError(f"pair_by must be one of {PAIRINGS}, got {pair_by!r}")
        self.pair_by = pair_by

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        questions = read_jsonl(self.question_file(data_dir))
        question_by_id = {q["question_id"]: q for q in questions}
        label_dir = pick_dir(data_dir, self.label_dirs)
        label_files = sorted(label_dir.glob(f"{LABEL_PREFIX}*{LABEL_SUFFIX}"))
        if not label_files:
            raise MissingDataError(f"no POPE label files {LABEL_PREFIX}<category>{LABEL_SUFFIX} in {label_dir}")
        answers = read_predictions(predictions_path).records
        for a in answers:
            if a["question_id"] not in question_by_id:
                raise BadRecordError(
                    f"{predictions_path}: question_id {a['question_id']!r} is not in the question file"
                )
        per_category, printed, per_item = {}, {}, []
        for label_file in label_files:
            category = label_file.name[len(LABEL_PREFIX) : -len(LABEL_SUFFIX)]
            label_lines = read_jsonl(label_file)
            cur = [a for a in answers if question_by_id[a["question_id"]].get("category") == category]
            labels = self._labels_for(cur, questions, category, label_lines, label_file)
            preds = [parse_yes_no(a["text"]) for a in cur]
            stats = binary_metrics(preds, labels)
            per_category[category] = stats
            printed[category] = ", ".join(_fmt(stats[k]) for k in ("f1", "acc", "precision", "recall", "yes_ratio"))
            for a, label, pred in zip(cur, labels, preds, strict=False):
                per_item.append(
                    {"question_id": a["question_id"], "category": category, "label": label, "pred_raw": a["text"],
                     "parsed": pred}
                )  # fmt: skip
        write_jsonl_atomic(out_dir / "per_item.jsonl", per_item)
        keys = ("acc", "precision", "recall", "f1", "yes_ratio")
        mean = {}
        for k in keys:
            values = [s[k] for s in per_category.values()]
            mean[k] = None if any(v is None for v in values) else sum(values) / len(values)
        return {
            **{c: s["f1"] for c, s in per_category.items()},
            "f1_mean": mean["f1"],
            "pair_by": self.pair_by,
            "per_category": per_category,
            "mean_over_categories": mean,
            "printed_summary_lines": printed,
        }

    def _labels_for(self, cur: list, questions: list, category: str, label_lines: list, label_file: Path) -> list:
        if self.pair_by == "position":
            return [line["label"] for line in label_lines]
        rank = {}
        for q in questions:
            if q.get("category") == category:
                rank[q["question_id"]] = len(rank)
        labels = []
        for a in cur:
            i = rank[a["question_id"]]
            if i >= len(label_lines):
                raise BadRecordError(f"{label_file}: no label line {i + 1} for question_id {a['question_id']!r}")
            labels.append(label_lines[i]["label"])
        return labels
