"""VQAv2 test-dev: EvalAI upload file (the score itself comes from the EvalAI server); when VQAv2-format
annotations are present (``v2_mscoco_*_annotations.json``), also the local m4c VQA accuracy."""

from __future__ import annotations

import json
from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LoaderBenchmark
from aligngpt.evaluation.io import find_file, read_json, read_predictions
from aligngpt.evaluation.normalize import normalize_vqa_answer, vqa_soft_score
from aligngpt.fileio import read_jsonl, write_jsonl_atomic, write_text_atomic

UPLOAD_FILE = "answers_upload.json"


def group_percent(scores: list[float], groups: list[str]) -> tuple[dict[str, float], dict[str, int]]:
    """Mean score ×100 and count per group, groups sorted by name."""
    by_group: dict[str, list[float]] = {}
    for score, group in zip(scores, groups, strict=True):
        by_group.setdefault(group, []).append(score)
    percent = {g: 100.0 * sum(v) / len(v) for g, v in sorted(by_group.items())}
    return percent, {g: len(v) for g, v in sorted(by_group.items())}


class VQAv2(LoaderBenchmark):
    name = "vqav2"
    folder = "vqav2"
    question_files = ("llava_vqav2_mscoco_test-dev2015.jsonl",)
    image_dirs = ("test2015",)
    full_test_files = ("llava_vqav2_mscoco_test2015.jsonl",)
    annotation_glob = "v2_mscoco_*_annotations.json"
    headline_key = "accuracy"

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        predictions = read_predictions(predictions_path, skip_bad_lines=True)
        results = predictions.text_by_id()
        test_split = read_jsonl(find_file(data_dir, self.full_test_files, "VQAv2 full test2015 question list"))
        upload = [
            {"question_id": q["question_id"], "answer": normalize_vqa_answer(results[q["question_id"]])}
            if q["question_id"] in results
            else {"question_id": q["question_id"], "answer": ""}
            for q in test_split
        ]
        write_text_atomic(out_dir / UPLOAD_FILE, json.dumps(upload))
        metrics: dict = {
            "upload_rows": len(upload),
            "convert_summary": f"total results: {len(results)}, total split: {len(test_split)}, "
            f"error_line: {len(predictions.bad_lines)}",
            "files": [UPLOAD_FILE],
            "accuracy": None,
        }
        annotation_files = sorted(Path(data_dir).glob(self.annotation_glob))
        if annotation_files:
            metrics.update(self._local_accuracy(annotation_files[0], results, out_dir))
        else:
            metrics["note"] = "no VQAv2 annotations here: submit the upload file to the EvalAI server"
        return metrics

    def _local_accuracy(self, annotation_file: Path, results: dict, out_dir: Path) -> dict:
        annotations = read_json(annotation_file)["annotations"]
        if self.only_predicted:
            annotations = [a for a in annotations if a["question_id"] in results]
        per_item, scores, types = [], [], []
        for a in annotations:
            raw = results.get(a["question_id"], "")
            humans = [h["answer"] for h in a["answers"]]
            score, unique_scores = vqa_soft_score(raw, humans, f"{annotation_file} question {a['question_id']}")
            scores.append(score)
            types.append(a["answer_type"])
            per_item.append(
                {
                    "question_id": a["question_id"],
                    "answer_type": a["answer_type"],
                    "pred_raw": raw,
                    "pred_processed": normalize_vqa_answer(raw),
                    "gt_processed": [normalize_vqa_answer(h) for h in humans],
                    "unique_answer_scores": unique_scores,
                    "score": score,
                }
            )
        write_jsonl_atomic(out_dir / "per_item.jsonl", per_item)
        accuracy = sum(scores) / len(scores) if scores else None
        percent, count = group_percent(scores, types)
        return {
            "samples": len(scores),
            "accuracy": accuracy,
            "accuracy_percent": None if accuracy is None else 100.0 * accuracy,
            "per_answer_type_percent": percent,
            "per_answer_type_count": count,
        }
