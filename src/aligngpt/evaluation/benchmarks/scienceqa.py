"""ScienceQA-IMG (test split, image subset): letter extraction and accuracy (docs/evaluation.md).

Evaluated without padding (processor centre crop, docs/evaluation.md); text-only questions get no image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LONG_MAX_NEW_TOKENS, MULTIPLE_CHOICE_SUFFIX, Benchmark
from aligngpt.evaluation.io import find_file, pick_dir, read_json, read_predictions
from aligngpt.evaluation.items import EvalItem
from aligngpt.fileio import write_jsonl_atomic, write_text_atomic
from aligngpt.prompts import IMAGE_TOKEN

OPTIONS = ("A", "B", "C", "D", "E")
FAILED = "FAILED"
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # '.' matches any character, as in the official regex
OUTPUT_FILE = "sqa_output.json"
RESULT_FILE = "sqa_result.json"


def parse_letter(text: str, options: tuple[str, ...] = OPTIONS) -> str:
    """Official extraction: bare letter; else ``"X. ..."``; else exactly one ``The answer is X.``."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else FAILED


def letter_index(letter: str, num_choices: int, options: tuple[str, ...] = OPTIONS) -> int:
    """Index of the letter among the first ``num_choices`` options, else -1."""
    return options.index(letter) if letter in options[:num_choices] else -1


class ScienceQAImg(Benchmark):
    name = "scienceqa_img"
    folder = "scienceqa"
    aliases = ("sqa", "scienceqa", "sqa_img", "scienceqa-img")
    max_new_tokens = LONG_MAX_NEW_TOKENS
    image_aspect_ratio = "square"
    question_files = ("llava_test_CQM-A.json",)
    image_dirs = ("ScienceQA_DATA/test", "images/test", "test")
    problems_files = ("ScienceQA_DATA/problems.json", "problems.json")
    splits_files = ("ScienceQA_DATA/pid_splits.json", "pid_splits.json")
    headline_key = "img_acc"

    def __init__(self, *, split: str = "test", **options) -> None:
        super().__init__(**options)
        self.split = split

    def load(self, data_dir: Path) -> list[EvalItem]:
        data_dir = Path(data_dir)
        path = find_file(data_dir, self.question_files, "ScienceQA question file")
        image_dir = pick_dir(data_dir, self.image_dirs)
        items = []
        for line in read_json(path):
            question = line["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()
            prompt = question + "\n" + MULTIPLE_CHOICE_SUFFIX
            if "image" in line:
                image, recorded = image_dir / line["image"], IMAGE_TOKEN + "\n" + prompt
            else:
                image, recorded = None, prompt
            items.append(EvalItem(line["id"], image, prompt, {"answer_fields": {"prompt": recorded}}))
        return items

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        split_ids = read_json(find_file(data_dir, self.splits_files, "ScienceQA pid_splits.json"))[self.split]
        problems = read_json(find_file(data_dir, self.problems_files, "ScienceQA problems.json"))
        predictions = {p["question_id"]: p for p in read_predictions(predictions_path).records}
        if self.only_predicted:
            split_ids = [pid for pid in split_ids if pid in predictions]
        results: dict = {"correct": [], "incorrect": []}
        sqa_results: dict = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
        per_item = []
        for pid in split_ids:
            prob = problems[pid]
            pred = predictions.get(pid, {"text": FAILED, "prompt": "Unknown"})
            answer = parse_letter(pred["text"])
            pred_idx = letter_index(answer, len(prob["choices"]))
            analysis = {
                "question_id": pid,
                "parsed_ans": answer,
                "ground_truth": OPTIONS[prob["answer"]],
                "question": pred["prompt"],
                "pred": pred["text"],
                "is_multimodal": IMAGE_TOKEN in pred["prompt"],
            }
            sqa_results["results"][pid] = pred_idx
            sqa_results["outputs"][pid] = pred["text"]
            correct = pred_idx == prob["answer"]
            results["correct" if correct else "incorrect"].append(analysis)
            per_item.append(
                {
                    "pid": pid,
                    "has_image": bool(prob.get("image")),
                    "num_choices": len(prob["choices"]),
                    "ground_truth": analysis["ground_truth"],
                    "pred_raw": predictions.get(pid, {}).get("text"),
                    "parsed_ans": answer,
                    "is_multimodal": analysis["is_multimodal"],
                    "correct": correct,
                }
            )
        correct = len(results["correct"])
        total = correct + len(results["incorrect"])
        img_correct = sum(x["is_multimodal"] for x in results["correct"])
        img_total = img_correct + sum(x["is_multimodal"] for x in results["incorrect"])
        acc = correct / total * 100 if total else None
        img_acc = img_correct / img_total * 100 if img_total else None
        sqa_results.update(acc=acc, correct=correct, count=total)
        write_text_atomic(out_dir / OUTPUT_FILE, json.dumps(results, indent=2))
        write_text_atomic(out_dir / RESULT_FILE, json.dumps(sqa_results, indent=2))
        write_jsonl_atomic(out_dir / "per_item.jsonl", per_item)
        printed = None
        if acc is not None and img_acc is not None:
            printed = f"Total: {total}, Correct: {correct}, Accuracy: {acc:.2f}%, IMG-Accuracy: {img_acc:.2f}%"
        return {
            "acc": acc,
            "img_acc": img_acc,
            "total": total,
            "correct": correct,
            "accuracy_percent": acc,
            "img_total": img_total,
            "img_correct": img_correct,
            "img_accuracy_percent": img_acc,
            "printed": printed,
            "files": [OUTPUT_FILE, RESULT_FILE],
        }
