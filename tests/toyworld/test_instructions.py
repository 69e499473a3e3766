import re
from collections import Counter

import pytest

from aligngpt.toyworld.instructions import (
    CAPTION_PROMPTS,
    EVAL_CAPTION_PROMPT,
    LOOSE_CATEGORY,
    POPE_SPLITS,
    SHORT_ANSWER_SUFFIX,
    InstructionConfig,
    make_conversation,
    make_qa,
    pope_negative,
)
from aligngpt.toyworld.text import alignment_f1, clean_caption, parse_caption, position_cell
from aligngpt.toyworld.world import COLOURS, SHAPES, SceneObject, WorldConfig, partner_of, sample_scene, stream_rng

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


# --- loose caption phrasings (the noisy-tasks study) ---------------------------------------------------------------
LOOSE = CAPTION_PROMPTS[2]


def test_loose_phrasing_is_answered_like_a_stage1_partial_caption_and_stands_alone():
    config = InstructionConfig(loose_prompts=(LOOSE,))
    loose_turns, clean_captions = [], 0
    for i, scene in enumerate(_scenes(400)):
        turns = make_conversation(scene, stream_rng(0, "loose", i), config)
        for qa in turns:
            if qa.question == LOOSE:
                assert turns == [qa]  # one turn: the sample's single alignment token serves only this prompt
                assert qa.noisy and qa.category == LOOSE_CATEGORY
                mentioned = [SceneObject(m.type, *m.cell) for m in parse_caption(qa.answer)]
                loose_turns.append(alignment_f1(mentioned, scene))
            elif qa.task == "caption":
                assert qa.answer == clean_caption(scene) and not qa.noisy  # the other phrasings stay clean
                clean_captions += 1
    assert len(loose_turns) > 10 and clean_captions > 10
    assert max(loose_turns) < 1.0  # every loose answer has at least one corrupted mention
    assert 0.2 < sum(loose_turns) / len(loose_turns) < 0.7  # partly right, like the stage-1 partial captions


def test_loose_fraction_zero_keeps_the_loose_phrasing_clean():
    config = InstructionConfig(loose_prompts=(LOOSE,), loose_fraction=0.0)
    scene = _scenes(1)[0]
    for i in range(60):
        qa = make_qa("caption", scene, stream_rng(0, "fraction", i), config=config)
        assert qa.answer == clean_caption(scene) and not qa.noisy


def test_default_config_draws_exactly_as_without_one():
    """The default world (and every earlier study's data) does not change: same answers, same random stream."""
    for i, scene in enumerate(_scenes(30)):
        for task in ("caption", "pope", "colour"):
            with_config, without = stream_rng(0, "same", i), stream_rng(0, "same", i)
            assert make_qa(task, scene, with_config, config=InstructionConfig()) == make_qa(task, scene, without)
            assert with_config.random() == without.random()


@pytest.mark.parametrize(
    ("prompts", "message"),
    [(("Describe the cat.",), "are not caption phrasings"), ((EVAL_CAPTION_PROMPT,), "cannot be a loose prompt")],
)
def test_bad_loose_prompts_are_refused(prompts, message):
    with pytest.raises(ValueError, match=message):
        InstructionConfig(loose_prompts=prompts)
    with pytest.raises(ValueError, match="loose_fraction"):
        InstructionConfig(loose_prompts=(LOOSE,), loose_fraction=1.5)
