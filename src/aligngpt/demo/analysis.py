"""Measurements of the toy-world study: CLIP-score quality, captions under forced levels, gate weights by task."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from aligngpt.evaluation.benchmarks.toyworld_metrics import score_captions
from aligngpt.fileio import read_jsonl

SCORE_FIELD = "clip_score"
LEVEL_FIELD = "similarity"


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equal-length arrays."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denominator) if denominator else 0.0


def clip_score_quality(scored: Path, num_levels: int) -> dict:
    """Spearman(CLIP score, true alignment) and the mean true alignment / score per level of a scored file."""
    records = [r for r in json.loads(Path(scored).read_text()) if SCORE_FIELD in r]
    scores = np.array([r[SCORE_FIELD] for r in records])
    truth = np.array([r["true_alignment"] for r in records])
    levels = np.array([r[LEVEL_FIELD] for r in records])
    per_level = []
    for level in range(num_levels):
        chosen = levels == level
        per_level.append({
            "level": level,
            "count": int(chosen.sum()),
            "mean_true_alignment": float(truth[chosen].mean()) if chosen.any() else None,
            "mean_clip_score": float(scores[chosen].mean()) if chosen.any() else None,
        })  # fmt: skip
    kinds = defaultdict(list)
    for record in records:
        kinds[record.get("noise_kind", "unknown")].append(record[SCORE_FIELD])
    return {
        "n": len(records),
        "spearman": spearman(scores, truth),
        "per_level": per_level,
        "mean_score_by_kind": {kind: float(np.mean(values)) for kind, values in sorted(kinds.items())},
    }


def caption_level_sweep(model_dir: Path, world_dir: Path, levels: int | None, batch_size: int, tokens: int) -> dict:
    """Caption F1 / CHAIR of a stage-1 model on the caption eval set, with the alignment token forced to each level.

    ``levels=None`` (the baseline) captions once without any forced level.
    """
    from PIL import Image

    import aligngpt
    from aligngpt.inference.pipeline import GenerationSettings

    pipeline = aligngpt.load(model_dir, device="cpu", template="plain")
    questions = read_jsonl(world_dir / "eval" / "caption" / "questions.jsonl")
    annotations = read_jsonl(world_dir / "eval" / "caption" / "annotations.jsonl")
    images = [Image.open(world_dir / "images" / q["image"]).convert("RGB") for q in questions]
    settings = GenerationSettings(max_new_tokens=tokens)
    results = {}
    for level in range(levels) if levels is not None else [None]:
        texts = []
        for start in range(0, len(questions), batch_size):
            chunk = images[start : start + batch_size]
            forced = None if level is None else [level] * len(chunk)
            answers = pipeline.generate_batch([(image, "") for image in chunk], settings, alignment_levels=forced)
            texts += [answer.text for answer in answers]
        predictions = {str(q["question_id"]): text for q, text in zip(questions, texts)}
        results["none" if level is None else str(level)] = {
            **score_captions(predictions, annotations),
            "example": texts[0] if texts else "",
        }
    return results


def gate_summary(rows: list[list[float]]) -> dict:
    """Statistics of gate weights ``rows`` (``[n, K]``, each row a softmax over the K local levels).

    ``kl_from_uniform`` is KL(mean weights || uniform) = log K - entropy of the mean; ``mean_level`` is the level
    index expected under the mean weights (``(K - 1) / 2`` for uniform weights; lower = more weight on low levels);
    ``per_sample_std`` is the standard deviation over samples, averaged over the levels.
    """
    matrix = np.asarray(rows, dtype=float)
    mean = matrix.mean(0)
    entropy_of_mean = float(-(mean * np.log(mean + 1e-12)).sum())
    return {
        "mean": mean.tolist(),
        "entropy_of_mean": entropy_of_mean,
        "mean_entropy": float(-(matrix * np.log(matrix + 1e-12)).sum(1).mean()),
        "kl_from_uniform": math.log(matrix.shape[1]) - entropy_of_mean,
        "mean_level": float((mean * np.arange(matrix.shape[1])).sum()),
        "per_sample_std": float(matrix.std(0).mean()),
        "n": len(rows),
    }


def gate_statistics(answers_path: Path, world_dir: Path) -> dict:
    """Gate statistics (:func:`gate_summary`) per question type, and the maximum entropy ``log K``."""
    category = {}
    for name in ("caption", "vqa", "pope"):
        for question in read_jsonl(world_dir / "eval" / name / "questions.jsonl"):
            category[str(question["question_id"])] = "pope" if name == "pope" else question.get("category", name)
    weights = defaultdict(list)
    for answer in read_jsonl(answers_path):
        alpha = (answer.get("metadata") or {}).get("alignment_weights")
        if alpha is not None:
            weights[category.get(str(answer["question_id"]), "other")].append(alpha)
    if not weights:
        return {}
    result = {task: gate_summary(rows) for task, rows in sorted(weights.items())}
    result["max_entropy"] = float(math.log(len(next(iter(weights.values()))[0])))
    return result


def caption_phrasing_sweep(
    model_dir: Path, world_dir: Path, prompts: tuple[str, ...], batch_size: int, tokens: int
) -> dict:
    """Captions of the evaluation images asked in each phrasing of ``prompts``, scored against the clean scenes.

    Returns ``{prompt: {caption scores..., "example", "gate": gate_summary or None}}``: the model's own chat template,
    the gate's weights of every prompt (``None`` for a model without a gate).
    """
    from PIL import Image

    import aligngpt
    from aligngpt.inference.pipeline import GenerationSettings

    pipeline = aligngpt.load(model_dir, device="cpu")
    questions = read_jsonl(world_dir / "eval" / "caption" / "questions.jsonl")
    annotations = read_jsonl(world_dir / "eval" / "caption" / "annotations.jsonl")
    images = [Image.open(world_dir / "images" / q["image"]).convert("RGB") for q in questions]
    settings = GenerationSettings(max_new_tokens=tokens)
    results = {}
    for prompt in prompts:
        answers = []
        for start in range(0, len(images), batch_size):
            answers += pipeline.generate_batch([(image, prompt) for image in images[start : start + batch_size]],
                                               settings)  # fmt: skip
        predictions = {str(q["question_id"]): a.text for q, a in zip(questions, answers)}
        alphas = [a.alignment_weights for a in answers if a.alignment_weights is not None]
        results[prompt] = {
            **score_captions(predictions, annotations),
            "example": answers[0].text if answers else "",
            "gate": gate_summary(alphas) if alphas else None,
        }
    return results


def forced_level_phrasings(
    model_dir: Path, world_dir: Path, prompts: tuple[str, ...], levels: int, batch_size: int, tokens: int
) -> dict:
    """Caption F1 / CHAIR_i of a stage-2 model asked in each phrasing with the alignment token forced to each level.

    The model's own chat template; ``a = E[level]`` replaces the gate's mixture. Returns ``{prompt: {level: scores}}``
    (levels as strings): whether the token still steers the answers after stage 2.
    """
    from PIL import Image

    import aligngpt
    from aligngpt.inference.pipeline import GenerationSettings

    pipeline = aligngpt.load(model_dir, device="cpu")
    questions = read_jsonl(world_dir / "eval" / "caption" / "questions.jsonl")
    annotations = read_jsonl(world_dir / "eval" / "caption" / "annotations.jsonl")
    images = [Image.open(world_dir / "images" / q["image"]).convert("RGB") for q in questions]
    settings = GenerationSettings(max_new_tokens=tokens)
    results: dict = {}
    for prompt in prompts:
        results[prompt] = {}
        for level in range(levels):
            texts = []
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                answers = pipeline.generate_batch([(image, prompt) for image in chunk], settings,
                                                  alignment_levels=[level] * len(chunk))  # fmt: skip
                texts += [answer.text for answer in answers]
            predictions = {str(q["question_id"]): text for q, text in zip(questions, texts)}
            results[prompt][str(level)] = score_captions(predictions, annotations)
    return results
