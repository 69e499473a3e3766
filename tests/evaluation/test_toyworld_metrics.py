"""The toy benchmark's scores: captions, VQA and POPE by hand, and a written eval folder scored against its truth."""

import json

import pytest

from aligngpt.evaluation.benchmarks.toyworld_metrics import (
    load_predictions,
    normalize_answer,
    pope_scores,
    score_caption,
    score_captions,
    score_eval_dir,
    score_pope,
    score_vqa,
    yes_no,
)
from aligngpt.toyworld.world import ObjectType, SceneObject, partner_of

RED_CIRCLE = SceneObject(ObjectType("red", "circle"), 0, 0)
BLUE_CROSS = SceneObject(ObjectType("blue", "cross"), 1, 1)
PARTNER = partner_of(RED_CIRCLE.type)  # yellow triangle


def test_caption_scores_by_hand():
    perfect = score_caption("A red circle at the top left and a blue cross in the center.", [RED_CIRCLE, BLUE_CROSS])
    assert (perfect.precision, perfect.recall, perfect.f1, perfect.hallucinated) == (1.0, 1.0, 1.0, 0)
    half = score_caption("A red circle and a green square.", [RED_CIRCLE, BLUE_CROSS])
    assert (half.precision, half.recall, half.f1) == (0.5, 0.5, 0.5)
    assert half.hallucinated == 1 and half.partner_hallucinated == 0
    partner = score_caption(f"A red circle and a {PARTNER.name}.", [RED_CIRCLE])
    assert partner.partner_hallucinated == 1 and partner.recall == 1.0 and partner.precision == 0.5
    empty = score_caption("Nothing here.", [RED_CIRCLE])
    assert (empty.f1, empty.mentions) == (0.0, 0)


def test_caption_aggregate_chair():
    annotations = [
        {"question_id": "a", "objects": [RED_CIRCLE.to_dict()]},
        {"question_id": "b", "objects": [BLUE_CROSS.to_dict()]},
    ]
    predictions = {"a": "A red circle.", "b": f"A blue cross, a red square and a {partner_of(BLUE_CROSS.type).name}."}
    scores = score_captions(predictions, annotations)
    assert scores["chair_i"] == pytest.approx(2 / 4)
    assert scores["chair_s"] == pytest.approx(1 / 2)
    assert scores["partner_rate"] == pytest.approx(1 / 4)
    assert scores["f1"] == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(KeyError, match="b"):
        score_captions({"a": "x"}, annotations)


def test_short_answer_normalisation():
    assert normalize_answer("Two.") == "2"
    assert normalize_answer("The top left") == "top left"
    assert normalize_answer("RED\nbecause it is") == "red"


def test_vqa_accuracy_by_type():
    answers = [
        {"question_id": 1, "answer": "3", "category": "count_all"},
        {"question_id": 2, "answer": "red", "category": "colour"},
        {"question_id": 3, "answer": "top left", "category": "position"},
    ]
    scores = score_vqa({"1": "three", "2": "Blue", "3": "Top left."}, answers)
    assert scores["by_category"] == {"colour": 0.0, "count_all": 1.0, "position": 1.0}
    assert scores["accuracy"] == pytest.approx(2 / 3)


def test_pope_parsing_and_scores():
    assert yes_no("No, there is not.") == "no"
    assert yes_no("Yes") == "yes"
    assert yes_no("There is a red circle. No doubt.") == "yes"  # only the first sentence counts
    scores = pope_scores(["yes", "yes", "no", "no"], ["yes", "no", "no", "yes"])
    assert scores == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5, "n": 4}
    labels = [
        {"question_id": "p1", "label": "yes", "category": "popular"},
        {"question_id": "p2", "label": "no", "category": "popular"},
        {"question_id": "r1", "label": "no", "category": "random"},
    ]
    split = score_pope({"p1": "Yes", "p2": "Yes", "r1": "No"}, labels)
    assert split["popular"]["accuracy"] == 0.5 and split["popular"]["yes_ratio"] == 1.0
    assert split["random"]["accuracy"] == 1.0
    assert split["all"]["n"] == 3


@pytest.fixture(scope="module")
def eval_world(tmp_path_factory):
    from aligngpt.toyworld.dataset import write_dataset

    out = tmp_path_factory.mktemp("world")
    write_dataset(out, seed=5, n_pretrain=80, n_finetune=80, n_eval=20, progress=False)
    return out


def test_scoring_a_written_eval_dir_with_ground_truth_scores_perfectly(eval_world, tmp_path):
    eval_dir = eval_world / "eval"
    truth = {}
    for line in (eval_dir / "caption" / "annotations.jsonl").read_text().splitlines():
        record = json.loads(line)
        truth[record["question_id"]] = record["caption"]
    for line in (eval_dir / "vqa" / "answers.jsonl").read_text().splitlines():
        record = json.loads(line)
        truth[record["question_id"]] = record["answer"]
    for line in (eval_dir / "pope" / "labels.jsonl").read_text().splitlines():
        record = json.loads(line)
        truth[record["question_id"]] = record["label"].capitalize()
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in truth.items()))
    scores = score_eval_dir(eval_dir, load_predictions(answers))
    assert scores["caption"]["f1"] == 1.0 and scores["caption"]["chair_i"] == 0.0
    assert scores["vqa"]["accuracy"] == 1.0
    assert set(scores["pope"]) == {"random", "popular", "adversarial", "all"}
    assert all(s["accuracy"] == 1.0 and s["yes_ratio"] == 0.5 for s in scores["pope"].values())
    # Always answering "yes" is chance level on the balanced POPE splits.
    always_yes = {k: ("Yes" if k.startswith("pope") else v) for k, v in truth.items()}
    assert score_eval_dir(eval_dir, always_yes)["pope"]["all"]["accuracy"] == 0.5


def test_bad_answer_file_names_the_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n{oops\n')
    with pytest.raises(ValueError, match="answers.jsonl:2"):
        load_predictions(path)
