import re
from collections import Counter

import pytest

from aligngpt.toyworld.instructions import (
    POPE_SPLITS,
    SHORT_ANSWER_SUFFIX,
    InstructionConfig,
    make_conversation,
    make_qa,
    pope_negative,
)
from aligngpt.toyworld.text import clean_caption, parse_caption, position_cell
from aligngpt.toyworld.world import COLOURS, SHAPES, WorldConfig, partner_of, sample_scene, stream_rng

WORLD = WorldConfig()


def _scenes(n, seed=0):
    return [sample_scene(stream_rng(seed, "qa-test", i), WORLD) for i in range(n)]


def _truth(qa, scene):
    """Answer recomputed independently from the question text and the scene."""
    q = qa.question.removesuffix(SHORT_ANSWER_SUFFIX)
    if qa.task == "caption":
        return clean_caption(scene)
    if qa.task == "count_all":
        return str(len(scene.objects))
    if qa.task == "count_shape":
        shape = next(s for s in SHAPES if f" {s}" in q)
        return str(sum(o.type.shape == shape for o in scene.objects))
    if qa.task == "colour":
        cell = position_cell(re.search(r"the object (?:at|on|in) the (.+)\?", q).group(1))
        return next(o.type.colour for o in scene.objects if (o.row, o.col) == cell)
    if qa.task == "shape":
        if m := re.search(r"the object (?:at|on|in) the (.+)\?", q):
            cell = position_cell(m.group(1))
            return next(o.type.shape for o in scene.objects if (o.row, o.col) == cell)
        colour = next(c for c in COLOURS if f"the {c} object" in q)
        return next(o.type.shape for o in scene.objects if o.type.colour == colour)
    if qa.task == "position":
        (mention,) = parse_caption(q)
        return next(o.position for o in scene.objects if o.type == mention.type)
    if qa.task == "pope":
        (mention,) = parse_caption(q)
        return "yes" if mention.type in scene.types else "no"
    raise AssertionError(qa.task)


@pytest.mark.parametrize("task", ["caption", "count_all", "count_shape", "colour", "shape", "position", "pope"])
def test_clean_answers_are_true_and_noisy_answers_false(task):
    for i, scene in enumerate(_scenes(80)):
        clean = make_qa(task, scene, stream_rng(0, task, i))
        assert not clean.noisy and clean.answer == _truth(clean, scene)
        noisy = make_qa(task, scene, stream_rng(0, task, i), noisy=True)
        assert noisy.noisy and noisy.answer != _truth(noisy, scene)


def test_short_answer_questions_carry_the_llava_suffix():
    scene = _scenes(1)[0]
    assert make_qa("colour", scene, stream_rng(0, "s")).question.endswith(SHORT_ANSWER_SUFFIX)
    assert not make_qa("caption", scene, stream_rng(0, "s")).question.endswith(SHORT_ANSWER_SUFFIX)


@pytest.mark.parametrize("split", POPE_SPLITS)
def test_pope_negatives_are_absent_and_of_their_split(split):
    for i, scene in enumerate(_scenes(100, seed=1)):
        negative = pope_negative(scene, split, stream_rng(1, split, i))
        if negative is None:
            continue
        assert negative not in scene.types
        if split == "popular":
            assert any(partner_of(t) == negative for t in scene.types)
        if split == "adversarial":
            assert any(t.colour == negative.colour or t.shape == negative.shape for t in scene.types)


def test_noise_knobs():
    scenes = _scenes(300, seed=2)
    predictable = InstructionConfig(noisy_tasks=("position",))
    caption_noise = InstructionConfig(noise_fraction=0.5, task_weights={"caption": 1.0}, max_turns=1)
    turns = [qa for i, s in enumerate(scenes) for qa in make_conversation(s, stream_rng(2, "a", i), predictable)]
    assert all(qa.noisy == (qa.task == "position") for qa in turns)
    assert any(qa.task == "position" for qa in turns)
    captions = [qa for i, s in enumerate(scenes) for qa in make_conversation(s, stream_rng(2, "b", i), caption_noise)]
    assert 0.4 < sum(qa.noisy for qa in captions) / len(captions) < 0.6
    clean = [
        qa for i, s in enumerate(scenes) for qa in make_conversation(s, stream_rng(2, "c", i), InstructionConfig())
    ]
    assert not any(qa.noisy for qa in clean)


def test_conversation_turns_and_task_mix():
    config = InstructionConfig(max_turns=3)
    lengths, tasks = Counter(), Counter()
    for i, scene in enumerate(_scenes(300, seed=3)):
        turns = make_conversation(scene, stream_rng(3, "t", i), config)
        lengths[len(turns)] += 1
        tasks.update(qa.task for qa in turns)
        assert len({qa.question for qa in turns}) == len(turns)
    assert set(lengths) <= {1, 2, 3} and lengths[1] and lengths[3]
    assert set(tasks) == set(config.task_weights)


@pytest.mark.parametrize(
    "kwargs",
    [{"noisy_tasks": ("dance",)}, {"max_turns": 0}, {"noise_fraction": 2.0}, {"task_weights": {"caption": -1.0}}],
)
def test_bad_instruction_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        InstructionConfig(**kwargs)
