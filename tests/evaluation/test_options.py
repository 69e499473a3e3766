"""Official-by-default behaviours and their corrected alternatives, plus the normaliser quirks."""

from __future__ import annotations

import json

import pytest
from eval_helpers import ReplayJudge, fixture_dir, predictions_path

from aligngpt.evaluation.benchmarks import get_benchmark
from aligngpt.evaluation.benchmarks.mme import parse_answer
from aligngpt.evaluation.benchmarks.pope import parse_yes_no
from aligngpt.evaluation.benchmarks.scienceqa import parse_letter
from aligngpt.evaluation.normalize import normalize_vqa_answer, vqa_soft_score


def _reordered_answers(name, tmp_path):
    """The answer file with its first line moved to the end (same answers, different order)."""
    lines = predictions_path(name).read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "reordered.jsonl"
    path.write_text("".join(lines[1:] + lines[:1]), encoding="utf-8")
    return path


def test_pope_position_pairing_is_official_and_question_id_pairing_is_order_free(tmp_path):
    inputs = fixture_dir("pope") / "inputs"
    expected = json.loads((fixture_dir("pope") / "expected" / "metrics.json").read_text())["per_category"]
    shuffled = _reordered_answers("pope", tmp_path)
    by_position = get_benchmark("pope").score(inputs, shuffled, tmp_path / "pos")
    by_id = get_benchmark("pope", pair_by="question_id").score(inputs, shuffled, tmp_path / "qid")
    assert any(by_position["per_category"][c]["f1"] != pytest.approx(s["f1"]) for c, s in expected.items())
    for category, stats in expected.items():
        assert by_id["per_category"][category]["f1"] == pytest.approx(stats["f1"], abs=1e-12)


def test_llava_bench_question_id_pairing_survives_reordered_answers(tmp_path):
    name = "llava_bench_in_the_wild"
    inputs = fixture_dir(name) / "inputs"
    shuffled = _reordered_answers(name, tmp_path)
    judge = ReplayJudge(inputs / "judge_replies.json")
    result = get_benchmark(name, pair_by="question_id").score(inputs, shuffled, tmp_path / "qid", judge=judge)
    assert result["relative_score"] == 80.9


def test_invalid_pairing_is_rejected():
    with pytest.raises(ValueError, match="pair_by"):
        get_benchmark("pope", pair_by="image")


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("3.14", "3.14"),  # a period before a digit stays
        ("5.", "5"),  # the mistyped look-behind: a period after a digit is deleted
        ("Twenty", "twenty"),  # only zero..ten are mapped
        ("None", "0"),
        ("dont", "don't"),
        ("x-y", "x y"),  # punctuation not touching a space becomes a space
        ("x - y", "x y"),  # ... and is deleted when it touches one
        ("12,000", "12000"),
    ],
)
def test_vqa_normaliser(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_period_deletion_is_capped_at_32():
    assert normalize_vqa_answer("." * 40 + "x") == "." * 8 + "x"


def test_soft_score_leave_one_out():
    humans = ["cat"] * 2 + ["dog"] * 8
    assert vqa_soft_score("Cat.", humans)[0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="10 human answers"):
        vqa_soft_score("cat", ["cat"] * 9, "q1")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("No, there is none.", "no"), ("NO", "yes"), ("Not sure.", "yes"), ("", "yes"), ("Yes. No.", "yes")],
)
def test_pope_yes_no_parsing(text, parsed):
    assert parse_yes_no(text) == parsed


@pytest.mark.parametrize(("text", "parsed"), [("yes\n", "yes"), ("nothing\n", "no"), ("i think yes\n", "other")])
def test_mme_first_four_characters(text, parsed):
    assert parse_answer(text) == parsed


@pytest.mark.parametrize(
    ("text", "letter"),
    [("B", "B"), ("C. blue", "C"), ("The answer is A,", "A"), ("The answer is A", "FAILED"), ("F", "FAILED")],
)
def test_scienceqa_letter(text, letter):
    assert parse_letter(text) == letter


def test_only_predicted_scores_a_partial_answer_file(tmp_path):
    inputs = fixture_dir("gqa") / "inputs"
    lines = predictions_path("gqa").read_text().splitlines(keepends=True)[:5]
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines))
    with pytest.raises(ValueError, match="no prediction"):
        get_benchmark("gqa").score(inputs, partial, tmp_path / "strict")
    result = get_benchmark("gqa", only_predicted=True).score(inputs, partial, tmp_path / "partial")
    assert result["accuracyPerSteps"] and sum(n for _, n in result["accuracyPerSteps"].values()) == 5
