from collections import Counter

import pytest

from aligngpt.toyworld.text import (
    PretrainNoiseConfig,
    alignment_f1,
    clean_caption,
    corrupt_mentions,
    hallucinated_partners,
    noisy_caption,
    parse_caption,
)
from aligngpt.toyworld.world import ObjectType, Scene, SceneObject, WorldConfig, partner_of, sample_scene, stream_rng

WORLD = WorldConfig()
NOISE = PretrainNoiseConfig()


def _scenes(n, seed=0):
    return [sample_scene(stream_rng(seed, "text-test", i), WORLD) for i in range(n)]


def test_parser_recovers_every_object_of_a_clean_caption():
    for scene in _scenes(300):
        parsed = [(m.type, m.cell) for m in parse_caption(clean_caption(scene))]
        assert parsed == [(o.type, (o.row, o.col)) for o in scene.objects]


def test_parser_handles_free_text():
    mentions = parse_caption("I see two Red Circles, an orange cross on the right and nothing else. Blue square!")
    assert [(m.type.name, m.position) for m in mentions] == [
        ("red circle", None),
        ("orange cross", "right"),
        ("blue square", None),
    ]
    assert parse_caption("a picture of shapes") == []


def test_clean_caption_grammar():
    scene = Scene((SceneObject(ObjectType("orange", "cross"), 0, 0), SceneObject(ObjectType("red", "circle"), 1, 1)))
    assert clean_caption(scene) == "An orange cross at the top left and a red circle in the center."


def test_true_alignment_matches_the_text_and_kinds():
    by_kind = {"clean": [], "partial": [], "unrelated": []}
    for i, scene in enumerate(_scenes(600, seed=1)):
        caption = noisy_caption(scene, stream_rng(1, "noise", i), WORLD, NOISE)
        by_kind[caption.kind].append(caption.true_alignment)
        # The stored degree is recomputable from the caption text alone.
        said = [SceneObject(m.type, *m.cell) for m in parse_caption(caption.text)]
        assert caption.true_alignment == pytest.approx(alignment_f1(said, scene))
        assert 0.0 <= caption.true_alignment <= 1.0
    assert all(v == 1.0 for v in by_kind["clean"])
    assert all(v < 1.0 for v in by_kind["partial"])
    mean = {k: sum(v) / len(v) for k, v in by_kind.items()}
    assert mean["clean"] > mean["partial"] > mean["unrelated"]
    assert mean["unrelated"] < 0.1
    shares = {k: len(v) / 600 for k, v in by_kind.items()}
    assert shares["clean"] == pytest.approx(0.25, abs=0.06)
    assert shares["partial"] == pytest.approx(0.5, abs=0.06)


def test_kind_fractions_are_parameters():
    only_unrelated = PretrainNoiseConfig(clean_fraction=0, partial_fraction=0, unrelated_fraction=1)
    kinds = Counter(
        noisy_caption(s, stream_rng(2, "n", i), WORLD, only_unrelated).kind for i, s in enumerate(_scenes(50, seed=2))
    )
    assert kinds == {"unrelated": 50}


def test_corruption_probability_controls_damage():
    scenes = [s for s in _scenes(400, seed=3) if len(s.objects) >= 3]

    def mean_alignment(prob):
        return sum(
            alignment_f1(corrupt_mentions(s, prob, stream_rng(3, "c", i)), s) for i, s in enumerate(scenes)
        ) / len(scenes)

    assert mean_alignment(0.1) > mean_alignment(0.5) > mean_alignment(0.95)


def test_force_partner_adds_an_absent_partner():
    for i, scene in enumerate(_scenes(200, seed=4)):
        lonely = [o for o in scene.objects if partner_of(o.type) not in scene.types]
        if len(scene.objects) >= 4 or not lonely:
            continue
        mentions = corrupt_mentions(scene, 0.3, stream_rng(4, "p", i), force_partner=True)
        assert hallucinated_partners(mentions, scene)


@pytest.mark.parametrize("kwargs", [{"clean_fraction": 0.9}, {"corrupt_prob_min": 0.95}])
def test_bad_noise_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        PretrainNoiseConfig(**kwargs)
