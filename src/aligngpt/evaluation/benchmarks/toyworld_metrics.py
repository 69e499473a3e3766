"""Scoring model answers on the toy-world evaluation sets.

* Captions: object F1 on (colour, shape) types, CHAIR_i (hallucinated mentions / all mentions), CHAIR_s (captions
  with at least one hallucination / captions) and the partner-hallucination rate (mentions of an absent partner of
  a present object / all mentions).
* VQA: exact match after light normalisation (case, punctuation, articles, number words), per question type.
* POPE: accuracy, precision, recall, F1 (positive = "yes") and the yes-ratio, per split; an answer is "no" when
  it contains the word "no" or "not", else "yes" (the usual POPE rule).

Predictions are ``{question_id: answer_text}``; :func:`load_predictions` reads LLaVA-style answer files
(JSONL with ``question_id`` and ``text``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aligngpt.evaluation.normalize import ARTICLES
from aligngpt.evaluation.normalize import NUMBER_WORDS as VQA_NUMBER_WORDS
from aligngpt.fileio import read_jsonl
from aligngpt.toyworld.text import hallucinated_partners, parse_caption
from aligngpt.toyworld.world import Scene, SceneObject

# The VQA normaliser's tables; "none" is not a count word in the toy world.
NUMBER_WORDS = {word: digit for word, digit in VQA_NUMBER_WORDS.items() if word != "none"}
NEGATION_WORDS = {"no", "not"}
_PUNCTUATION = re.compile(r"[^\w\s]")


def load_predictions(path: str | Path) -> dict[str, str]:
    """``{question_id: text}`` from a JSONL answers file (field ``text``, or ``answer`` as a fallback)."""
    predictions = {}
    for number, record in enumerate(read_jsonl(path), start=1):
        if "question_id" not in record or not ({"text", "answer"} & record.keys()):
            raise ValueError(f"{path}: record {number} needs 'question_id' and 'text' fields")
        predictions[str(record["question_id"])] = str(record.get("text", record.get("answer")))
    return predictions


def normalize_answer(text: str) -> str:
    """Lower-case first line without punctuation or articles, number words as digits: "Two." -> "2"."""
    first_line = text.strip().split("\n")[0].lower()
    words = _PUNCTUATION.sub(" ", first_line).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def yes_no(text: str) -> str:
    """POPE answer parsing: "no" if the first sentence contains "no"/"not", else "yes"."""
    first_sentence = text.strip().split(".")[0]
    return "no" if NEGATION_WORDS & set(normalize_answer(first_sentence).split()) else "yes"


@dataclass(frozen=True)
class CaptionScore:
    """Scores of one caption against its scene."""

    precision: float
    recall: float
    f1: float
    mentions: int
    hallucinated: int
    partner_hallucinated: int


def score_caption(text: str, objects: Iterable[SceneObject]) -> CaptionScore:
    """Object-type precision/recall/F1 and hallucination counts of a caption ``text``."""
    scene = Scene(tuple(objects))
    mentions = parse_caption(text)
    said = {m.type for m in mentions}
    truth = scene.types
    hits = len(said & truth)
    precision = hits / len(said) if said else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    hallucinated = sum(m.type not in truth for m in mentions)
    partners = len(hallucinated_partners(mentions, scene))
    return CaptionScore(precision, recall, f1, len(mentions), hallucinated, partners)


def _require(predictions: Mapping[str, str], ids: list[str], what: str) -> None:
    missing = [qid for qid in ids if qid not in predictions]
    if missing:
        raise KeyError(f"{what}: no prediction for {len(missing)} question(s), e.g. {missing[:5]}")


def _objects(record: dict) -> list[SceneObject]:
    try:
        return [SceneObject.from_dict(o) for o in record["objects"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"caption annotation {record.get('question_id')!r} has bad 'objects': {err}") from err


def score_captions(predictions: Mapping[str, str], annotations: list[dict]) -> dict[str, float]:
    """Mean F1/precision/recall over captions; CHAIR_i, CHAIR_s and partner rate over all mentions."""
    ids = [str(a["question_id"]) for a in annotations]
    _require(predictions, ids, "captions")
    scores = [score_caption(predictions[qid], _objects(a)) for qid, a in zip(ids, annotations)]
    n = len(scores)
    mentions = sum(s.mentions for s in scores)
    return {
        "f1": sum(s.f1 for s in scores) / n if n else 0.0,
        "precision": sum(s.precision for s in scores) / n if n else 0.0,
        "recall": sum(s.recall for s in scores) / n if n else 0.0,
        "chair_i": sum(s.hallucinated for s in scores) / mentions if mentions else 0.0,
        "chair_s": sum(s.hallucinated > 0 for s in scores) / n if n else 0.0,
        "partner_rate": sum(s.partner_hallucinated for s in scores) / mentions if mentions else 0.0,
        "n": n,
    }


def score_vqa(predictions: Mapping[str, str], answers: list[dict]) -> dict[str, object]:
    """Exact-match accuracy overall and per ``category`` (question type)."""
    ids = [str(a["question_id"]) for a in answers]
    _require(predictions, ids, "vqa")
    per_category: dict[str, list[bool]] = {}
    for qid, record in zip(ids, answers):
        correct = normalize_answer(predictions[qid]) == normalize_answer(str(record["answer"]))
        per_category.setdefault(str(record["category"]), []).append(correct)
    every = [c for values in per_category.values() for c in values]
    return {
        "accuracy": sum(every) / len(every) if every else 0.0,
        "by_category": {k: sum(v) / len(v) for k, v in sorted(per_category.items())},
        "n": len(every),
    }


def pope_scores(predicted: list[str], labels: list[str]) -> dict[str, float]:
    """Binary scores for parallel lists of "yes"/"no" predictions and labels."""
    tp = sum(p == "yes" and t == "yes" for p, t in zip(predicted, labels))
    fp = sum(p == "yes" and t == "no" for p, t in zip(predicted, labels))
    fn = sum(p == "no" and t == "yes" for p, t in zip(predicted, labels))
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == t for p, t in zip(predicted, labels)) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(p == "yes" for p in predicted) / n if n else 0.0,
        "n": n,
    }


def score_pope(predictions: Mapping[str, str], labels: list[dict]) -> dict[str, dict[str, float]]:
    """POPE scores per split (``category``) and over all splits (key ``"all"``)."""
    ids = [str(r["question_id"]) for r in labels]
    _require(predictions, ids, "pope")
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    for qid, record in zip(ids, labels):
        pred, truth = by_split.setdefault(str(record["category"]), ([], []))
        pred.append(yes_no(predictions[qid]))
        truth.append(str(record["label"]).strip().lower())
    result = {split: pope_scores(*pair) for split, pair in sorted(by_split.items())}
    result["all"] = pope_scores(
        [p for pair in by_split.values() for p in pair[0]], [t for pair in by_split.values() for t in pair[1]]
    )
    return result


def score_eval_dir(
    eval_dir: str | Path, predictions: Mapping[str, str], only_predicted: bool = False
) -> dict[str, object]:
    """Score every toy-world eval set in ``eval_dir`` (as written by ``write_dataset``) that has predictions.

    A set whose questions have no predictions at all is skipped; a partly answered set is an error unless
    ``only_predicted`` (smoke runs with ``--limit``), which scores the answered questions only.
    """
    eval_dir = Path(eval_dir)
    sets = {
        "caption": (eval_dir / "caption" / "annotations.jsonl", score_captions),
        "vqa": (eval_dir / "vqa" / "answers.jsonl", score_vqa),
        "pope": (eval_dir / "pope" / "labels.jsonl", score_pope),
    }
    results: dict[str, object] = {}
    for name, (path, scorer) in sets.items():
        truth = read_jsonl(path)
        if only_predicted:
            truth = [r for r in truth if str(r["question_id"]) in predictions]
        if any(str(r["question_id"]) in predictions for r in truth):
            results[name] = scorer(predictions, truth)
    return results
