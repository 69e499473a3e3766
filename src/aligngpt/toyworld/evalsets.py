"""Evaluation sets on held-out scenes, in the LLaVA eval question-file style.

Question lines are ``{"question_id", "image", "text", "category"}``; ground truth goes to a separate file keyed
by ``question_id``: caption annotations (object list + clean caption), VQA answers, POPE labels. POPE has
one positive and one negative question per image and split, so every split is balanced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aligngpt.toyworld.instructions import EVAL_CAPTION_PROMPT, POPE_SPLITS, make_qa, pope_negative, pope_question
from aligngpt.toyworld.text import clean_caption
from aligngpt.toyworld.world import Scene, stream_rng

VQA_TASKS = ("count_all", "count_shape", "colour", "shape", "position")


@dataclass
class EvalSets:
    """Question and ground-truth records of the three evaluation sets."""

    caption_questions: list[dict] = field(default_factory=list)
    caption_annotations: list[dict] = field(default_factory=list)
    vqa_questions: list[dict] = field(default_factory=list)
    vqa_answers: list[dict] = field(default_factory=list)
    pope_questions: list[dict] = field(default_factory=list)
    pope_labels: list[dict] = field(default_factory=list)


def build_eval_sets(scenes: list[tuple[str, Scene]], seed: int) -> EvalSets:
    """Eval records for ``scenes`` given as (relative image path, scene); deterministic in ``seed``."""
    sets = EvalSets()
    for index, (image, scene) in enumerate(scenes):
        rng = stream_rng(seed, "eval-questions", index)
        qid = f"caption-{index:05d}"
        sets.caption_questions.append(
            {"question_id": qid, "image": image, "text": EVAL_CAPTION_PROMPT, "category": "caption"}
        )
        sets.caption_annotations.append(
            {"question_id": qid, "image": image, "objects": scene.to_list(), "caption": clean_caption(scene)}
        )
        for task in VQA_TASKS:
            qa = make_qa(task, scene, rng)
            qid = f"vqa-{task}-{index:05d}"
            sets.vqa_questions.append({"question_id": qid, "image": image, "text": qa.question, "category": task})
            sets.vqa_answers.append({"question_id": qid, "answer": qa.answer, "category": task})
        for split in POPE_SPLITS:
            negative = pope_negative(scene, split, rng)
            if negative is None:
                continue
            positive = scene.objects[int(rng.integers(len(scene.objects)))].type
            for obj_type, label in ((positive, "yes"), (negative, "no")):
                qid = f"pope-{split}-{index:05d}-{label}"
                sets.pope_questions.append(
                    {"question_id": qid, "image": image, "text": pope_question(obj_type), "category": split}
                )
                sets.pope_labels.append({"question_id": qid, "image": image, "label": label, "category": split})
    return sets
