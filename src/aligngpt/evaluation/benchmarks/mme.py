"""MME: conversion to the MME eval-tool format and the eval tool's scores (docs/evaluation.md).

Converter: the short-answer suffix is removed from the prompt and `` Please answer yes or no.`` re-appended
(two spaces when only that matches the ground truth); lines ``image\\tquestion\\tgt\\tanswer`` per task.
Scorer: lines read back (each answer still ends in ``\\n``), lower-cased; exactly yes/no, else the first four
characters decide (contains ``yes`` -> yes, else contains ``no`` -> no, else other = wrong).
acc = question accuracy, acc+ = share of images (consecutive line pairs) with both answers right,
task score = 100·acc + 100·acc+; Perception = sum over 10 tasks, Cognition over 4.

An answer holding a tab or newline breaks the official file format (the official tool crashes); here those
characters are replaced by spaces and counted in ``warnings``.
"""

from __future__ import annotations

from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LoaderBenchmark, ratio
from aligngpt.evaluation.io import read_predictions
from aligngpt.fileio import BadRecordError, MissingDataError, write_jsonl_atomic, write_text_atomic
from aligngpt.prompts import SHORT_ANSWER_INSTRUCTION

GT_ROOT = "MME_Benchmark_release_version"
QA_SUBDIR = "questions_answers_YN"
YES_NO_SUFFIX = " Please answer yes or no."
EVAL_TOOL_DIR = "eval_tool_answers"
PREFIX_CHARS = 4
EVAL_TYPES = {
    "Perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                   "artwork", "OCR"),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}  # fmt: skip


def load_ground_truth(root: Path) -> dict[tuple[str, str, str], str]:
    """``(task, "<image stem>.txt", question) -> "Yes"|"No"`` from the MME release folder."""
    if not root.is_dir():
        raise MissingDataError(f"MME ground-truth folder not found: {root}")
    gt = {}
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        qa_dir = category_dir / QA_SUBDIR if (category_dir / QA_SUBDIR).is_dir() else category_dir
        for txt in sorted(qa_dir.glob("*.txt")):
            for line_no, line in enumerate(txt.read_text(encoding="utf-8").splitlines(keepends=True), start=1):
                fields = line.strip().split("\t")
                if len(fields) != 2:
                    raise BadRecordError(f"{txt}:{line_no}: expected 'question<TAB>answer'")
                gt[(category_dir.name, txt.name, fields[0])] = fields[1]
    return gt


def parse_answer(as_read: str) -> str:
    """The eval tool's parse of the lower-cased answer field (which still ends in a newline)."""
    if as_read in ("yes", "no"):
        return as_read
    prefix = as_read[:PREFIX_CHARS]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def task_metrics(lines: list[str], where: str) -> dict:
    """Scores of one task from its eval-tool lines (consecutive pairs = one image)."""
    if len(lines) % 2:
        raise BadRecordError(f"{where}: odd number of questions; MME pairs two questions per image")
    gts, preds = [], []
    both_right = 0
    for i in range(0, len(lines), 2):
        right = 0
        for line in lines[i : i + 2]:
            _, _, gt, pred = line.split("\t")
            gt, pred = gt.lower(), parse_answer(pred.lower())
            gts.append(gt)
            preds.append(pred)
            right += gt == pred
        both_right += right == 2
    clean = [(g, p) for g, p in zip(gts, preds, strict=True) if p != "other"]
    tp = sum(g == "yes" and p == "yes" for g, p in clean)
    fn = sum(g == "yes" and p == "no" for g, p in clean)
    fp = sum(g == "no" and p == "yes" for g, p in clean)
    tn = sum(g == "no" and p == "no" for g, p in clean)
    acc = sum(g == p for g, p in zip(gts, preds, strict=True)) / len(gts)
    acc_plus = both_right / (len(lines) // 2)
    return {
        "TP": tp,
        "FN": fn,
        "TN": tn,
        "FP": fp,
        "precision": ratio(tp, tp + fp) or 0.0,  # sklearn's zero_division default gives 0.0
        "recall": ratio(tp, tp + fn) or 0.0,
        "other_num": len(gts) - len(clean),
        "acc": acc,
        "acc_plus": acc_plus,
        "score": 0 + acc * 100 + acc_plus * 100,
    }


class MME(LoaderBenchmark):
    name = "mme"
    folder = "MME"
    question_files = ("llava_mme.jsonl", "llava_mme_1.jsonl")
    image_dirs = (GT_ROOT,)
    headline_key = "Perception"

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        gt = load_ground_truth(Path(data_dir) / GT_ROOT)
        by_task: dict[str, list[str]] = {}
        per_item, sanitized = [], 0
        for r in read_predictions(predictions_path).records:
            qid = str(r["question_id"])
            category, image = qid.split("/")[0], qid.split("/")[-1]
            file = image.split(".")[0] + ".txt"
            prompt = r.get("prompt")
            if prompt is None:
                raise BadRecordError(f"{predictions_path}: question_id {qid!r} has no 'prompt' field")
            question = (
                prompt.replace(SHORT_ANSWER_INSTRUCTION, "").strip() if SHORT_ANSWER_INSTRUCTION in prompt else prompt
            )
            key_question = question
            if YES_NO_SUFFIX.strip() not in key_question:
                key_question = question + YES_NO_SUFFIX
                if (category, file, key_question) not in gt:
                    key_question = question + " " + YES_NO_SUFFIX
            answer_gt = gt.get((category, file, key_question))
            if answer_gt is None:
                raise BadRecordError(f"{predictions_path}: no MME ground truth for {qid!r} question {question!r}")
            text = r["text"]
            if "\t" in text or "\n" in text:
                text, sanitized = text.replace("\t", " ").replace("\n", " "), sanitized + 1
            by_task.setdefault(category, []).append("\t".join((file, key_question, answer_gt, text)) + "\n")
            as_read = text.lower() + "\n"
            parsed = parse_answer(as_read)
            per_item.append(
                {"category": category, "image": image, "question": question, "gt": answer_gt, "pred_raw": r["text"],
                 "pred_as_read": as_read, "parsed": parsed, "correct": parsed == answer_gt.lower()}
            )  # fmt: skip
        for task, lines in by_task.items():
            write_text_atomic(out_dir / EVAL_TOOL_DIR / f"{task}.txt", "".join(lines))
        write_jsonl_atomic(out_dir / "per_item.jsonl", per_item)
        tasks, totals = {}, {}
        for eval_type, names in EVAL_TYPES.items():
            total = 0
            for task in names:
                if by_task.get(task):
                    tasks[task] = task_metrics(by_task[task], f"MME task {task}")
                    total += tasks[task]["score"]
            totals[eval_type] = total
        unknown = sorted(set(by_task) - {t for names in EVAL_TYPES.values() for t in names})
        warnings = [f"{sanitized} answers had tabs/newlines replaced by spaces"] if sanitized else []
        if unknown:
            warnings.append(f"tasks not in the MME eval tool were not scored: {unknown}")
        return {
            **totals,
            "totals": totals,
            "tasks": tasks,
            "printed_totals": [f"total score: {totals[t]}" for t in EVAL_TYPES],
            "files": [f"{EVAL_TOOL_DIR}/{t}.txt" for t in by_task],
            "warnings": warnings,
        }
