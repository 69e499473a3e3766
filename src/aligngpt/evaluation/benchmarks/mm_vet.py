"""MM-Vet: ``{"v1_<id>": answer}`` results file and the official GPT-4 grader with its aggregation (docs/evaluation.md).

Grader: few-shot prompt + ``question | answer (<AND>/<OR> padded) | prediction | ``; the score is the first
space-separated token of the reply as a float in [0, 1]. Otherwise the grader is asked again with a suffix
(first re-query at the current temperature, +0.5 per re-query); after 5 re-queries the score is 0.
Capability c: 100·Σ score / #samples with c; total = 100·mean; integration scores per exact capability set;
with several runs the mean over runs, ``std`` of the run totals; all rounded to 1 decimal.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LONG_MAX_NEW_TOKENS, LoaderBenchmark
from aligngpt.evaluation.io import find_file, read_json, read_predictions
from aligngpt.evaluation.judge import Judge, JudgeRequest
from aligngpt.evaluation.judge_prompts import MM_VET_FEW_SHOT, MM_VET_REQUERY_SUFFIX
from aligngpt.fileio import BadRecordError, write_jsonl_atomic, write_text_atomic

JUDGE_MODEL = "gpt-4-0613"
JUDGE_MAX_TOKENS = 3
TEMPERATURE_STEP = 0.5
MAX_TRIES = 5
DECIMALS = 1
RESULTS_FILE = "results.json"


def grader_content(question: str, answer: str, prediction: str, requery: bool = False) -> str:
    gt = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    content = MM_VET_FEW_SHOT + "\n" + " | ".join([question, gt, prediction, ""])
    return content + MM_VET_REQUERY_SUFFIX if requery else content


def parse_grade(content: str) -> tuple[str, float | None]:
    """(first token, its float value if within [0, 1] else None)."""
    token = content.split(" ")[0].strip()
    try:
        score = float(token)
    except ValueError:
        return token, None
    return token, (None if score > 1.0 or score < 0.0 else score)


def grade_sample(judge: Judge, model: str, question: str, answer: str, prediction: str, run: int):
    """(stored content, score, requests made) for one sample, following the official retry loop."""
    temperature = 0.0
    request = JudgeRequest.user(model, grader_content(question, answer, prediction), temperature, JUDGE_MAX_TOKENS,
                                nonce=run)  # fmt: skip
    content = judge.complete(request)
    requests = [(request, content)]
    tries = 1
    while True:
        token, score = parse_grade(content)
        if score is not None:
            return token, score, requests
        requery = grader_content(question, answer, prediction, requery=True)
        request = JudgeRequest.user(model, requery, temperature, JUDGE_MAX_TOKENS, nonce=run)
        content = judge.complete(request)
        requests.append((request, content))
        tries += 1
        temperature += TEMPERATURE_STEP
        if tries > MAX_TRIES:
            return content, 0.0, requests


def _round(value: float) -> float:
    import numpy as np

    return float(np.round(np.float64(value), DECIMALS))


def _runs_text(values: list[float]) -> str:
    return "[" + ", ".join(repr(_round(v)) for v in values) + "]"


class MMVet(LoaderBenchmark):
    name = "mm_vet"
    folder = "mm-vet"
    aliases = ("mmvet", "mm-vet")
    max_new_tokens = LONG_MAX_NEW_TOKENS
    image_aspect_ratio = "square"
    judge_model = JUDGE_MODEL
    question_files = ("llava-mm-vet.jsonl",)
    image_dirs = ("mm-vet/images", "images")
    metadata_files = ("mm-vet/mm-vet.json", "mm-vet.json")
    headline_key = "total"

    def __init__(self, *, num_run: int = 1, **options) -> None:
        super().__init__(**options)
        self.num_run = num_run

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge: Judge | None) -> dict:
        from tqdm import tqdm

        results = {f"v1_{r['question_id']}": r["text"] for r in read_predictions(predictions_path).records}
        write_text_atomic(out_dir / RESULTS_FILE, json.dumps(results, indent=2))
        data = read_json(find_file(data_dir, self.metadata_files, "MM-Vet metadata mm-vet.json"))
        if self.only_predicted:
            data = {k: v for k, v in data.items() if k in results}
        missing = [k for k in data if k not in results]
        if missing:
            raise BadRecordError(
                f"{predictions_path}: no answer for {len(missing)} MM-Vet samples (e.g. {missing[:5]})"
            )
        model_name = predictions_path.stem
        grades: dict[str, dict] = {k: {"model": [], "content": [], "score": []} for k in data}
        log = []
        for run in range(self.num_run):
            for key, line in tqdm(data.items(), desc=f"MM-Vet grading run {run}"):
                content, score, requests = grade_sample(
                    judge, self.judge_model, line["question"], line["answer"], results[key], run
                )
                grades[key]["model"].append(self.judge_model)
                grades[key]["content"].append(content)
                grades[key]["score"].append(score)
                log.extend({**r.as_dict(), "reply": reply} for r, reply in requests)
        files = {
            "grade": f"{model_name}_{self.judge_model}-grade-{self.num_run}runs.json",
            "cap": f"{model_name}_{self.judge_model}-cap-score-{self.num_run}runs.csv",
            "cap_int": f"{model_name}_{self.judge_model}-cap-int-score-{self.num_run}runs.csv",
        }
        write_text_atomic(out_dir / files["grade"], json.dumps(grades, indent=4))
        write_jsonl_atomic(out_dir / "judge_requests.jsonl", log)
        write_jsonl_atomic(
            out_dir / "per_item.jsonl",
            [{"id": k, "capability": data[k]["capability"], "scores": g["score"], "content": g["content"]}
             for k, g in grades.items()],
        )  # fmt: skip
        metrics = self._aggregate(data, grades)
        self._write_csvs(out_dir, files, model_name, metrics)
        return {"num_run": self.num_run, **metrics, "files": files}

    def _aggregate(self, data: dict, grades: dict) -> dict:
        import numpy as np

        counter: Counter = Counter()
        set_counts: dict[str, int] = {}
        for line in data.values():
            caps = set(line["capability"])
            counter.update(caps)
            name = "_".join(sorted(caps))
            set_counts[name] = set_counts.get(name, 0) + 1
        cap_sums = {c: [0.0] * self.num_run for c, _ in counter.most_common()}
        set_sums = {name: [0.0] * self.num_run for name in set_counts}
        totals = [0.0] * self.num_run
        for key, grade in grades.items():
            caps = set(data[key]["capability"])
            name = "_".join(sorted(caps))
            for i in range(self.num_run):
                score = grade["score"][i]
                for c in caps:
                    cap_sums[c][i] += score
                set_sums[name][i] += score
                totals[i] += score
        total_runs = np.array(totals) / len(data) * 100
        std, runs = _round(total_runs.std()), _runs_text(list(total_runs))
        caps = {c: _round((np.array(v) / counter[c] * 100).mean()) for c, v in cap_sums.items()}
        integration = {n: _round(np.mean(np.array(v) / set_counts[n] * 100)) for n, v in set_sums.items()}
        total = _round(total_runs.mean())
        return {
            "total": total,
            "caps": caps,
            "capability_scores": {**caps, "total": total},
            "capability_integration_scores": {**integration, "total": total},
            "std": std,
            "runs": runs,
        }

    @staticmethod
    def _write_csvs(out_dir: Path, files: dict, model_name: str, metrics: dict) -> None:
        """The evaluator's two one-row score tables (capabilities; capability integrations)."""
        for key in ("cap", "cap_int"):
            table = metrics["capability_scores" if key == "cap" else "capability_integration_scores"]
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["", *table, "std", "runs"])
            writer.writerow([model_name, *table.values(), metrics["std"], metrics["runs"]])
            write_text_atomic(out_dir / files[key], buffer.getvalue())
