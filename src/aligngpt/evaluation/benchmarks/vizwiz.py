"""VizWiz (test-dev): EvalAI upload ``[{image, answer}]``; with VizWiz-format annotations present, also the
local m4c VQA accuracy of the uploaded (already normalised) answers."""

from __future__ import annotations

import json
from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LoaderBenchmark
from aligngpt.evaluation.benchmarks.vqav2 import group_percent
from aligngpt.evaluation.io import find_file, read_json, read_predictions
from aligngpt.evaluation.normalize import normalize_vqa_answer, vqa_soft_score
from aligngpt.fileio import read_jsonl, write_jsonl_atomic, write_text_atomic

UPLOAD_FILE = "answers_upload.json"
UNANSWERABLE = "unanswerable"


class VizWiz(LoaderBenchmark):
    name = "vizwiz"
    folder = "vizwiz"
    question_files = ("llava_test.jsonl",)
    image_dirs = ("test",)
    annotation_files = ("val_synthetic.json", "Annotations/val.json", "val.json")
    headline_key = "accuracy"

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        predictions = read_predictions(predictions_path, skip_bad_lines=True)
        results = predictions.text_by_id()
        test_split = read_jsonl(self.question_file(data_dir))
        metrics: dict = {
            "convert_summary": f"total results: {len(results)}, total split: {len(test_split)}, "
            f"error_line: {len(predictions.bad_lines)}",
            "accuracy": None,
            "files": [],
            "warnings": [],
        }
        missing = [q["question_id"] for q in test_split if q["question_id"] not in results]
        if self.only_predicted:
            test_split = [q for q in test_split if q["question_id"] in results]
        elif missing:  # the official converter asserts; report instead of writing an incomplete upload
            metrics["warnings"].append(f"{len(missing)} questions have no prediction (e.g. {missing[:5]})")
            return metrics
        upload = [{"image": q["image"], "answer": normalize_vqa_answer(results[q["question_id"]])} for q in test_split]
        write_text_atomic(out_dir / UPLOAD_FILE, json.dumps(upload))
        metrics["files"].append(UPLOAD_FILE)
        metrics["upload_rows"] = len(upload)
        try:
            annotation_file = find_file(data_dir, self.annotation_files, "VizWiz annotations")
        except FileNotFoundError:
            metrics["note"] = "no VizWiz annotations here: submit the upload file to the EvalAI server"
            return metrics
        raw_by_image = {q["image"]: results[q["question_id"]] for q in test_split}
        metrics.update(self._local_accuracy(read_json(annotation_file), upload, raw_by_image, out_dir))
        return metrics

    def _local_accuracy(self, annotations: list, upload: list, raw_by_image: dict, out_dir: Path) -> dict:
        by_image = {a["image"]: a for a in annotations}
        if any(u["image"] not in by_image for u in upload):
            return {"warnings": ["the annotation file does not cover the question file; no local accuracy"]}
        per_item, scores, types = [], [], []
        unanswerable_pred = unanswerable_gt = both = 0
        for u in upload:
            a = by_image[u["image"]]
            humans = [h["answer"] for h in a["answers"]]
            score, unique_scores = vqa_soft_score(u["answer"], humans, f"VizWiz image {u['image']}")
            says_unanswerable = u["answer"] == UNANSWERABLE
            gt_unanswerable = a.get("answerable", 1) == 0 or a.get("answer_type") == UNANSWERABLE
            unanswerable_pred += says_unanswerable
            unanswerable_gt += gt_unanswerable
            both += says_unanswerable and gt_unanswerable
            scores.append(score)
            types.append(a["answer_type"])
            per_item.append(
                {
                    "image": u["image"],
                    "answer_type": a["answer_type"],
                    "pred_raw": raw_by_image[u["image"]],
                    "uploaded_answer": u["answer"],
                    "pred_processed_again": normalize_vqa_answer(u["answer"]),
                    "gt_processed": [normalize_vqa_answer(h) for h in humans],
                    "unique_answer_scores": unique_scores,
                    "score": score,
                    "pred_says_unanswerable": says_unanswerable,
                }
            )
        write_jsonl_atomic(out_dir / "per_item.jsonl", per_item)
        accuracy = sum(scores) / len(scores)
        percent, count = group_percent(scores, types)
        return {
            "samples": len(scores),
            "accuracy": accuracy,
            "accuracy_percent": 100.0 * accuracy,
            "per_answer_type_percent": percent,
            "per_answer_type_count": count,
            "unanswerable_predictions": unanswerable_pred,
            "unanswerable_gt": unanswerable_gt,
            "unanswerable_pred_and_gt": both,
        }
