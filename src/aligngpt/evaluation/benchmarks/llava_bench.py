"""LLaVA-Bench-in-the-Wild: GPT-4 review of the model answer against the GPT-4 reference (docs/evaluation.md).

Official pairing (``pair_by="position"``): questions, reference answers and model answers are zipped by line.
``pair_by="question_id"`` joins the two answer files on ``question_id`` instead.
Score parsing: first line, ``,`` -> space, split on single spaces; exactly two floats, else ``[-1, -1]``
(still averaged in). Relative score = round(mean_model, 3) / round(mean_gpt4, 3) × 100, per category and all.
"""

from __future__ import annotations

import json
from pathlib import Path

from aligngpt.evaluation.benchmarks.base import LONG_MAX_NEW_TOKENS, LoaderBenchmark
from aligngpt.evaluation.io import find_file
from aligngpt.evaluation.judge import Judge, JudgeRequest
from aligngpt.evaluation.judge_prompts import LLAVA_BENCH_RULES, LLAVA_BENCH_SYSTEM
from aligngpt.fileio import BadRecordError, read_jsonl, write_jsonl_atomic, write_text_atomic

JUDGE_MODEL = "gpt-4-0314"
JUDGE_TEMPERATURE = 0.2
JUDGE_MAX_TOKENS = 1024
REVIEWS_FILE = "reviews.jsonl"
FAILED_SCORES = [-1, -1]
PAIRINGS = ("position", "question_id")


def parse_scores(review: str) -> list:
    """[reference score, model score] from the review's first line, or ``[-1, -1]``."""
    fields = review.split("\n")[0].replace(",", " ").split(" ")
    if len(fields) != 2:
        return list(FAILED_SCORES)
    try:
        return [float(fields[0]), float(fields[1])]
    except ValueError:
        return list(FAILED_SCORES)


def review_content(caption: str, question: str, reference: str, answer: str, category: str) -> str:
    rule = LLAVA_BENCH_RULES[category]
    role = rule["role"]
    return (
        f"[Context]\n{caption}\n\n[Question]\n{question}\n\n"
        f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n[System]\n{rule['prompt']}\n\n"
    )


def summarize(reviews: list[dict]) -> tuple[dict, dict]:
    """``summarize_gpt_review.py``: per category (sorted, plus ``all``) the rounded relative score."""
    import numpy as np

    groups: dict[str, list] = {}
    for r in reviews:
        groups.setdefault(r["category"], []).append(r["tuple"])
        groups.setdefault("all", []).append(r["tuple"])
    printed, means = {}, {}
    for key, tuples in sorted(groups.items()):
        raw = np.asarray(tuples).mean(0).tolist()
        gpt4, model = (round(x, 3) for x in raw)
        printed[key] = {
            "relative_score": round(model / gpt4 * 100, 1) if gpt4 else None,
            "gpt4_score_x10": round(gpt4 * 10, 1),
            "model_score_x10": round(model * 10, 1),
        }
        means[key] = {"n": len(tuples), "mean_gpt4": raw[0], "mean_model": raw[1], "mean_gpt4_rounded3": gpt4,
                      "mean_model_rounded3": model}  # fmt: skip
    return printed, means


class LLaVABench(LoaderBenchmark):
    name = "llava_bench_in_the_wild"
    folder = "llava-bench-in-the-wild"
    aliases = ("llava_bench", "llava-bench", "llava_w", "llava-w", "llava-bench-in-the-wild", "llavabench")
    max_new_tokens = LONG_MAX_NEW_TOKENS
    image_aspect_ratio = "square"
    judge_model = JUDGE_MODEL
    question_files = ("questions.jsonl",)
    image_dirs = ("images",)
    context_files = ("context.jsonl",)
    reference_files = ("answers_gpt4.jsonl",)
    headline_key = "relative_score"

    def __init__(self, *, pair_by: str = "position", **options) -> None:
        super().__init__(**options)
        if pair_by not in PAIRINGS:
            raise ValueError(f"pair_by must be one of {PAIRINGS}, got {pair_by!r}")
        self.pair_by = pair_by

    def review_requests(self, data_dir: Path, predictions_path: Path) -> list[tuple[dict, JudgeRequest]]:
        """(review record without content/tuple, judge request) per question, in the official order."""
        questions = read_jsonl(self.question_file(data_dir))
        contexts = read_jsonl(find_file(data_dir, self.context_files, "LLaVA-Bench context file"))
        references = read_jsonl(find_file(data_dir, self.reference_files, "LLaVA-Bench GPT-4 answers"))
        answers = read_jsonl(predictions_path)
        if self.pair_by == "question_id":
            ref_by_id = {a["question_id"]: a for a in references}
            ans_by_id = {a["question_id"]: a for a in answers}
            if self.only_predicted:
                questions = [q for q in questions if q["question_id"] in ans_by_id]
            for q in questions:
                if q["question_id"] not in ans_by_id or q["question_id"] not in ref_by_id:
                    raise BadRecordError(f"question_id {q['question_id']!r} lacks a model or reference answer")
            references = [ref_by_id[q["question_id"]] for q in questions]
            answers = [ans_by_id[q["question_id"]] for q in questions]
        image_to_context = {c["image"]: c for c in contexts}
        pairs = []
        for idx, (q, ref, ans) in enumerate(zip(questions, references, answers, strict=False)):
            caption = image_to_context[q["image"]]["caption"]
            caption = "\n".join(caption) if isinstance(caption, list) else caption
            category = "llava_bench_" + q["category"]
            if category not in LLAVA_BENCH_RULES:
                raise BadRecordError(f"question {q['question_id']!r}: unknown category {q['category']!r}")
            content = review_content(caption, q["text"], ref["text"], ans["text"], category)
            record = {
                "id": idx + 1,
                "question_id": q["question_id"],
                "answer1_id": ref.get("answer_id", ref["question_id"]),
                "answer2_id": ans["answer_id"] if "answer_id" in ans else ans["question_id"],
                "category": category,
            }
            request = JudgeRequest.user(
                self.judge_model, content, JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS, system=LLAVA_BENCH_SYSTEM
            )
            pairs.append((record, request))
        return pairs

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge: Judge | None) -> dict:
        from tqdm import tqdm

        reviews, requests = [], []
        for record, request in tqdm(self.review_requests(data_dir, predictions_path), desc="LLaVA-Bench judge"):
            reply = judge.complete(request)
            reviews.append({**record, "content": reply, "tuple": parse_scores(reply)})
            requests.append({**request.as_dict(), "reply": reply})
        write_text_atomic(out_dir / REVIEWS_FILE, "".join(json.dumps(r) + "\n" for r in reviews))
        write_jsonl_atomic(out_dir / "judge_requests.jsonl", requests)
        printed, means = summarize(reviews)
        overall = printed.get("all", {})
        return {
            "relative_score": overall.get("relative_score"),
            "gpt4_score_x10": overall.get("gpt4_score_x10"),
            "model_score_x10": overall.get("model_score_x10"),
            "pair_by": self.pair_by,
            "printed": printed,
            "means": means,
            "parsed_scores": [
                {"question_id": r["question_id"], "category": r["category"], "tuple": r["tuple"]} for r in reviews
            ],
            "files": [REVIEWS_FILE, "judge_requests.jsonl"],
        }
