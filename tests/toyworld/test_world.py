from collections import Counter

import numpy as np
import pytest

from aligngpt.toyworld.render import image_to_array, render_scene
from aligngpt.toyworld.world import (
    ALL_TYPES,
    ObjectType,
    WorldConfig,
    partner_of,
    sample_scene,
    stream_rng,
)

WORLD = WorldConfig()


def _scene(seed, index, world=WORLD, stream="test"):
    return sample_scene(stream_rng(seed, stream, index), world)


def test_same_seed_gives_same_scene_and_pixels():
    a_rng, b_rng = stream_rng(3, "s", 7), stream_rng(3, "s", 7)
    a, b = sample_scene(a_rng, WORLD), sample_scene(b_rng, WORLD)
    assert a == b
    assert np.array_equal(image_to_array(render_scene(a, a_rng, WORLD)), image_to_array(render_scene(b, b_rng, WORLD)))


def test_streams_and_indices_differ():
    scenes = {_scene(0, i) for i in range(50)}
    assert len(scenes) > 40
    assert [_scene(0, i, stream="a") for i in range(20)] != [_scene(0, i, stream="b") for i in range(20)]


def test_scene_invariants():
    counts = Counter()
    for i in range(300):
        scene = _scene(1, i)
        n = len(scene.objects)
        counts[n] += 1
        assert WORLD.min_objects <= n <= WORLD.max_objects
        assert len({o.type for o in scene.objects}) == n
        assert len({(o.row, o.col) for o in scene.objects}) == n
        assert list(scene.objects) == sorted(scene.objects, key=lambda o: (o.row, o.col))
    assert set(counts) == {1, 2, 3, 4}


def test_partner_is_an_involution_pairing_different_colour_and_shape():
    for t in ALL_TYPES:
        p = partner_of(t)
        assert p != t and partner_of(p) == t
        assert p.colour != t.colour and p.shape != t.shape


def test_partners_co_occur_far_more_often_than_other_types():
    partner_hits = partner_trials = other_hits = other_trials = 0
    for i in range(1500):
        scene = _scene(2, i)
        if len(scene.objects) < 2:
            continue
        for t in scene.types:
            partner_trials += 1
            partner_hits += partner_of(t) in scene.types
            others = [u for u in ALL_TYPES if u != t and u != partner_of(t)]
            other_trials += len(others)
            other_hits += sum(u in scene.types for u in others)
    assert partner_hits / partner_trials > 0.3
    assert other_hits / other_trials < 0.15


def test_no_partners_when_probability_zero():
    world = WorldConfig(partner_prob=0.0)
    together = sum(any(partner_of(t) in s.types for t in s.types) for s in (_scene(4, i, world) for i in range(400)))
    # Only chance co-occurrence remains (a partner among the other 1..3 uniform draws).
    assert together / 400 < 0.2


def test_rendered_image_has_object_colours_in_their_cells():
    scene = _scene(5, 0)
    image = image_to_array(render_scene(scene, stream_rng(5, "r", 0), WORLD))
    assert image.shape == (36, 36, 3) and image.dtype == np.uint8
    cell = 36 // 3
    for obj in scene.objects:
        centre = image[obj.row * cell + cell // 2, obj.col * cell + cell // 2].astype(int)
        grey = image[0, 0].astype(int) if (0, 0) not in {(o.row, o.col) for o in scene.objects} else None
        assert centre.max() - centre.min() > 60  # saturated object colour, not grey background
        if grey is not None:
            assert grey.max() - grey.min() < 5


@pytest.mark.parametrize(
    "kwargs", [{"min_objects": 0}, {"max_objects": 10}, {"partner_prob": 1.5}, {"partnered_types": ("pink circle",)}]
)
def test_bad_world_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        WorldConfig(**kwargs)


def test_unknown_colour_rejected():
    with pytest.raises(ValueError, match="colour"):
        ObjectType("pink", "circle")
