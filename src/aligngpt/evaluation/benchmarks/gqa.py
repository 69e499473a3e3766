"""GQA testdev-balanced: converter (``text.rstrip('.').lower()``) and the official ``eval.py`` metrics
(accuracy, binary, open, validity, plausibility, distribution, per-type/length/steps accuracy)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LoaderBenchmark
from aligngpt.evaluation.io import find_file, read_json, read_predictions
from aligngpt.fileio import BadRecordError, write_jsonl_atomic, write_text_atomic

PREDICTIONS_FILE = "testdev_balanced_predictions.json"
NON_STEP_OPERATIONS = ("exist", "query: name", "choose name")
CHI_SQUARE_SCALE = 100
DETAILED_METRICS = ("accuracyPerStructuralType", "accuracyPerSemanticType", "accuracyPerLength", "accuracyPerSteps")


def convert_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def words_num(question: dict) -> int:
    return len(question["question"].split())


def steps_num(question: dict) -> int:
    """Reasoning steps: semantic operations except the final querying kinds (official definition)."""
    return len(
        [c for c in question["semantic"]
         if not any(o in f"{c['operation']}: {c['argument']}" for o in NON_STEP_OPERATIONS)]
    )  # fmt: skip


def belongs(element: str, group: list, question: dict) -> bool:
    if "Common" in question["types"]["detailed"]:
        group = ["color", "material", "shape"]
    return element in group


def chi_square(gold: dict, predicted: dict) -> float | None:
    """Chi-square of predicted vs gold answer histograms, weighted by group size (official)."""
    sum_score = sum_overall = 0
    for group, answers in gold.items():
        score = overall = 0
        for ans, e in answers.items():
            o = predicted[group].get(ans, 0)
            score += (float(o - e) ** 2) / e
            overall += e
        sum_score += score * overall
        sum_overall += overall
    return float(sum_score) / sum_overall if sum_overall else None


def avg(values: list) -> float:
    return float(sum(values)) / len(values) if values else 0


class GQA(LoaderBenchmark):
    name = "gqa"
    folder = "gqa"
    question_files = ("llava_gqa_testdev_balanced.jsonl",)
    image_dirs = ("data/images", "images")
    gqa_question_files = ("testdev_balanced_questions.json", "data/testdev_balanced_questions.json")
    choices_files = ("testdev_balanced_choices.json", "data/testdev_balanced_choices.json")
    headline_key = "accuracy"

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge) -> dict:
        records = read_predictions(predictions_path).records
        converted = [{"questionId": r["question_id"], "prediction": convert_prediction(r["text"])} for r in records]
        write_text_atomic(out_dir / PREDICTIONS_FILE, json.dumps(converted))
        raw = {r["question_id"]: r["text"] for r in records}
        predictions = {p["questionId"]: p["prediction"] for p in converted}
        questions = read_json(find_file(data_dir, self.gqa_question_files, "GQA questions file"))
        try:
            choices = read_json(find_file(data_dir, self.choices_files, "GQA choices file"))
        except FileNotFoundError:
            choices = None  # testdev ships without choices: validity/plausibility are 0
        if self.only_predicted:
            questions = {k: v for k, v in questions.items() if k in predictions}
        missing = [qid for qid, q in questions.items() if q["isBalanced"] and qid not in predictions]
        if missing:
            raise BadRecordError(
                f"{predictions_path}: no prediction for {len(missing)} balanced GQA questions (e.g. {missing[:5]})"
            )
        metrics, per_item = self._evaluate(questions, predictions, choices, raw)
        write_jsonl_atomic(out_dir / "per_item.jsonl", per_item)
        metrics["files"] = [PREDICTIONS_FILE]
        return metrics

    @staticmethod
    def _evaluate(questions: dict, predictions: dict, choices: dict | None, raw: dict) -> tuple[dict, list]:
        scores: dict = {k: [] for k in ("accuracy", "binary", "open", "validity", "plausibility")}
        detailed = {k: defaultdict(list) for k in DETAILED_METRICS}
        gold_dist: dict = defaultdict(lambda: defaultdict(int))
        pred_dist: dict = defaultdict(lambda: defaultdict(int))
        per_item = []
        for qid, q in questions.items():
            if not q["isBalanced"]:
                continue
            gold, predicted = q["answer"], predictions[qid]
            score = float(predicted == gold)
            scores["accuracy"].append(score)
            detailed["accuracyPerLength"][words_num(q)].append(score)
            detailed["accuracyPerSteps"][steps_num(q)].append(score)
            detailed["accuracyPerStructuralType"][q["types"]["structural"]].append(score)
            detailed["accuracyPerSemanticType"][q["types"]["semantic"]].append(score)
            scores["open" if q["types"]["structural"] == "query" else "binary"].append(score)
            valid = belongs(predicted, choices[qid]["valid"], q) if choices else False
            plausible = belongs(predicted, choices[qid]["plausible"], q) if choices else False
            scores["validity"].append(float(valid))
            scores["plausibility"].append(float(plausible))
            group = q["groups"]["global"]
            if group is not None:
                gold_dist[group][gold] += 1
                pred_dist[group][predicted] += 1
            per_item.append(
                {"question_id": qid, "answer": gold, "pred_raw": raw.get(qid), "balanced": True,
                 "structural": q["types"]["structural"], "semantic": q["types"]["semantic"],
                 "prediction_converted": predicted, "correct": predicted == gold, "counted_in_accuracy": True}
            )  # fmt: skip
        chi = chi_square(gold_dist, pred_dist)
        metrics = {k: avg(v) * 100 for k, v in scores.items()}
        metrics["distribution"] = None if chi is None else chi / CHI_SQUARE_SCALE
        for k, groups in detailed.items():
            metrics[k] = {t: [avg(v) * 100, len(v)] for t, v in groups.items()}
        metrics["printed_accuracy"] = f"Accuracy: {metrics['accuracy']:.2f}%"
        return metrics, per_item
