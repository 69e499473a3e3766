"""TextVQA (val, with OCR tokens in the prompt): m4c soft accuracy, results matched to annotations by
``(image_id, question parsed back out of the prompt)`` (docs/evaluation.md)."""

from __future__ import annotations

import re
from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LoaderBenchmark
from aligngpt.evaluation.io import find_file, read_json, read_predictions
from aligngpt.evaluation.normalize import normalize_vqa_answer, vqa_soft_score
from aligngpt.fileio import BadRecordError, write_jsonl_atomic

_OCR_TOKENS_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_from_prompt(prompt: str) -> str:
    """Recover the lower-cased question from an answer line's ``prompt`` (official rules)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_TOKENS_QUESTION.search(prompt)
        if match is None:
            raise ValueError(f"cannot find 'Question: ... Short answer:' in prompt {prompt!r}")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"cannot recover the question from prompt {prompt!r}")
    return question.lower()


class TextVQA(LoaderBenchmark):
    name = "textvqa"
    folder = "textvqa"
    question_files = ("llava_textvqa_val_v051_ocr.jsonl",)
    image_dirs = ("train_images",)
    annotation_files = ("TextVQA_0.5.1_val.json",)
    headline_key = "accuracy"

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        annotations = read_json(find_file(data_dir, self.annotation_files, "TextVQA annotation file"))["data"]
        by_key = {(a["image_id"], a["question"].lower()): a for a in annotations}
        predictions = read_predictions(predictions_path)
        per_item, scores = [], []
        for r in predictions.records:
            where = f"{predictions_path} question_id={r['question_id']!r}"
            if "prompt" not in r:
                raise BadRecordError(f"{where}: no 'prompt' field (needed to find the annotation)")
            question = question_from_prompt(r["prompt"])
            annotation = by_key.get((r["question_id"], question))
            if annotation is None:
                raise BadRecordError(f"{where}: no annotation with image_id and question {question!r}")
            score, unique_scores = vqa_soft_score(r["text"], annotation["answers"], where)
            scores.append(score)
            per_item.append(
                {
                    "question_id": r["question_id"],
                    "question_from_prompt": question,
                    "pred_raw": r["text"],
                    "pred_processed": normalize_vqa_answer(r["text"]),
                    "gt_processed": [normalize_vqa_answer(a) for a in annotation["answers"]],
                    "unique_answer_scores": unique_scores,
                    "score": score,
                }
            )
        if not scores:
            raise BadRecordError(f"{predictions_path}: no predictions")
        accuracy = sum(scores) / len(scores)
        write_jsonl_atomic(out_dir / "per_item.jsonl", per_item)
        return {
            "samples": len(scores),
            "accuracy": accuracy,
            "accuracy_percent": 100.0 * accuracy,
            "printed": f"Accuracy: {100.0 * accuracy:.2f}%",
        }
