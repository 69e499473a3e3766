"""SEED-Bench (v1): exact string match of the output with the answer letter; accuracy per question type,
total, image-only (the reported "SEED-IMG" number) and video-only (docs/evaluation.md); leaderboard upload file."""

from __future__ import annotations

import json
from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LoaderBenchmark, ratio
from aligngpt.evaluation.io import find_file, read_json, read_predictions
from aligngpt.fileio import write_jsonl_atomic, write_text_atomic

UPLOAD_FILE = "answers_upload.jsonl"


def _int_or_same(qid):
    try:
        return int(qid)
    except (TypeError, ValueError):
        return qid


class SEEDBench(LoaderBenchmark):
    name = "seed_bench"
    folder = "seed_bench"
    aliases = ("seed", "seed_img", "seed-bench")
    question_files = ("llava-seed-bench.jsonl", "llava-seed-bench-2.jsonl")
    image_dirs = (".",)
    annotation_files = ("SEED-Bench.json",)
    headline_key = "image"

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        data = read_json(find_file(data_dir, self.annotation_files, "SEED-Bench annotation file"))
        type_names = {type_id: name for name, type_id in data["question_type"].items()}
        results = {r["question_id"]: r for r in read_predictions(predictions_path).records}
        questions = data["questions"]
        if self.only_predicted:
            questions = [q for q in questions if self._result(results, q) is not None]
        passes = {key: self._accuracy(questions, results, key) for key in (None, "image", "video")}
        total, image, video = passes[None], passes["image"], passes["video"]
        per_type = {
            type_names[t]: {"type_id": t, "correct": c, "count": n, "accuracy_percent": c / n * 100}
            for t, (c, n) in sorted(total["per_type"].items())
        }
        metrics = {
            "total": total["accuracy"],
            "image": image["accuracy"],
            "video": video["accuracy"],
            **{f"{name}_{k}": v[src] for name, v in (("total", total), ("image", image), ("video", video))
               for k, src in (("accuracy_percent", "accuracy"), ("correct", "correct"), ("count", "count"))},
            "per_question_type": per_type,
            "files": [],
            "warnings": [],
        }  # fmt: skip
        per_item = []
        for q in questions:
            r = self._result(results, q)
            scored = (
                _int_or_same(q["question_id"]) in results
                and results[_int_or_same(q["question_id"])]["text"] == q["answer"]
            )
            per_item.append(
                {"question_id": q["question_id"], "data_type": q["data_type"], "type_id": q["question_type_id"],
                 "answer": q["answer"], "pred_raw": None if r is None else r["text"],
                 "result_id_type": None if r is None else type(r["question_id"]).__name__, "scored_correct": scored}
            )  # fmt: skip
        write_jsonl_atomic(out_dir / "per_item.jsonl", per_item)
        missing = [q["question_id"] for q in questions if self._result(results, q) is None]
        if missing:  # the official upload loop raises KeyError here
            metrics["warnings"].append(f"no upload file: {len(missing)} questions have no result (e.g. {missing[:5]})")
        else:
            lines = [
                json.dumps({"question_id": q["question_id"], "prediction": self._result(results, q)["text"]}) + "\n"
                for q in data["questions"] if not self.only_predicted or self._result(results, q) is not None
            ]  # fmt: skip
            write_text_atomic(out_dir / UPLOAD_FILE, "".join(lines))
            metrics["files"].append(UPLOAD_FILE)
        return metrics

    @staticmethod
    def _result(results: dict, question: dict) -> dict | None:
        """The upload step's lookup: the id as written in the annotation, then as int."""
        qid = question["question_id"]
        if qid in results:
            return results[qid]
        return results.get(_int_or_same(qid))

    @staticmethod
    def _accuracy(questions: list, results: dict, data_type: str | None) -> dict:
        """Official ``eval_single``: results are looked up by ``int(question_id)`` only."""
        counts: dict[int, int] = {}
        correct: dict[int, int] = {}
        for q in questions:
            if data_type is not None and q["data_type"] != data_type:
                continue
            t = q["question_type_id"]
            counts[t] = counts.get(t, 0) + 1
            row = results.get(_int_or_same(q["question_id"]))
            correct[t] = correct.get(t, 0) + (row is not None and row["text"] == q["answer"])
        n, c = sum(counts.values()), sum(correct.values())
        accuracy = ratio(c, n)
        return {
            "accuracy": None if accuracy is None else c / n * 100,
            "correct": c,
            "count": n,
            "per_type": {t: (correct[t], counts[t]) for t in counts},
        }
