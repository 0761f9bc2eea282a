"""The synthetic benchmark's scenes and captions (ttd_d2/data/synthetic/render.py, captions.py):
object counts and sizes, the dominant object, the caption vocabularies and statistics."""
import hashlib
from collections import Counter

import numpy as np
import pytest

from ttd_d2.data.synthetic import (
    BACKGROUND_VOCABULARY,
    CLASSES,
    EVALUATION_TEMPLATES,
    FILLER_WORDS,
    TEMPLATES,
    caption_words,
    evaluation_caption,
    image_rngs,
    render_scene,
    training_caption,
)


@pytest.fixture(scope="module")
def scenes():
    """(scene, caption rng) for 1500 images of seed 7."""
    out = []
    for index in range(1500):
        scene_rng, caption_rng = image_rngs(7, index)
        out.append((render_scene(scene_rng, 64), caption_rng))
    return out


# ----------------------------------------------------------------------------- rendering
def test_render_scene_shapes_and_values():
    scene = render_scene(image_rngs(0, 0)[0], 48)
    assert scene.image.shape == (48, 48, 3) and scene.image.dtype == np.uint8
    assert scene.instance_mask.shape == (48, 48) and scene.instance_mask.dtype == np.uint8
    assert set(np.unique(scene.instance_mask)) <= set(range(len(scene.objects) + 1))


def test_render_is_deterministic_per_seed_and_index():
    a = render_scene(image_rngs(3, 11)[0])
    b = render_scene(image_rngs(3, 11)[0])
    c = render_scene(image_rngs(4, 11)[0])
    assert np.array_equal(a.image, b.image) and a.objects == b.objects
    assert not np.array_equal(a.image, c.image)


def test_object_counts_classes_and_sizes(scenes):
    counts = Counter(len(scene.objects) for scene, _ in scenes)
    n = len(scenes)
    for k, p in ((1, 0.5), (2, 0.3), (3, 0.2)):
        assert abs(counts[k] / n - p) < 0.05, counts
    for scene, _ in scenes:
        ids = [o.category_id for o in scene.objects]
        assert len(set(ids)) == len(ids)
        assert scene.objects[0].dominant and not any(o.dominant for o in scene.objects[1:])
        assert 0.23 * 64 <= scene.objects[0].radius <= 0.30 * 64
        assert all(o.radius <= 0.20 * 64 for o in scene.objects[1:])


def test_dominant_is_the_largest_visible_region_and_every_object_visible(scenes):
    dominant_share = []
    for scene, _ in scenes:
        areas = np.bincount(scene.instance_mask.ravel(), minlength=len(scene.objects) + 1)[1:]
        assert (areas > 0).all()
        if len(areas) > 1:
            assert areas[0] > areas[1:].max()
            dominant_share.append(areas[0] / areas.sum())
    assert 0.55 < np.mean(dominant_share) < 0.8  # the probe's set-up: ~66% of the object area


# ----------------------------------------------------------------------------- captions
def test_filler_vocabulary_has_no_class_words():
    assert not set(FILLER_WORDS) & set(CLASSES)
    for template in TEMPLATES:
        assert not set(caption_words(template.format(objects="", background=""))) & set(CLASSES)


def test_training_caption_statistics(scenes):
    outcomes = Counter()
    for scene, caption_rng in scenes:
        caption = training_caption(scene.objects, scene.background, caption_rng)
        named = [w for w in caption_words(caption.text) if w in CLASSES]
        assert named == list(caption.words)
        assert named[0] == scene.objects[0].category  # dominant first, always correct
        assert set(w for w in caption_words(caption.text) if w not in CLASSES) <= set(FILLER_WORDS)
        if len(scene.objects) == 1:
            assert named == [scene.objects[0].category]
        present = {o.category for o in scene.objects}
        expected = [scene.objects[0].category]
        for obj, outcome in zip(scene.objects[1:], caption.secondary_outcomes):
            outcomes[outcome] += 1
            if outcome == "named":
                expected.append(obj.category)
            elif outcome == "replaced":
                expected.append(None)
        assert len(named) == len(expected) == len(set(named))
        for word, want in zip(named, expected):
            assert word == want if want is not None else word not in present
    total = sum(outcomes.values())
    assert total > 700
    assert abs(outcomes["omitted"] / total - 0.3) < 0.05, outcomes
    assert abs(outcomes["replaced"] / total - 0.3) < 0.05, outcomes


def test_training_caption_noise_is_configurable(scenes):
    multi = [(s, r) for s, r in scenes if len(s.objects) > 1][:50]
    for scene, _ in multi:
        caption = training_caption(scene.objects, scene.background, np.random.default_rng(0), 0.0, 0.0)
        assert caption.words == tuple(o.category for o in scene.objects)
    with pytest.raises(ValueError):
        training_caption(multi[0][0].objects, "noisy", np.random.default_rng(0), 0.7, 0.7)


def test_evaluation_caption_names_every_object(scenes):
    for scene, _ in scenes[:300]:
        caption = evaluation_caption(scene.objects, np.random.default_rng(1))
        named = [w for w in caption_words(caption.text) if w in CLASSES]
        assert named == [o.category for o in scene.objects] == list(caption.words)


def test_evaluation_captions_never_name_the_background_training_captions_can(scenes):
    """The caption region of an evaluation caption is the union of its objects: it must name
    nothing else. Training captions stay web-like and still describe the background."""
    assert EVALUATION_TEMPLATES and all("{background}" not in t for t in EVALUATION_TEMPLATES)
    for seed in range(8):
        for index in range(250):
            scene = render_scene(image_rngs(seed, index)[0], 32)
            text = evaluation_caption(scene.objects, image_rngs(seed, index)[1]).text
            assert BACKGROUND_VOCABULARY.isdisjoint(caption_words(text)), text
    naming = sum(not BACKGROUND_VOCABULARY.isdisjoint(caption_words(
        training_caption(scene.objects, scene.background, caption_rng).text)) for scene, caption_rng in scenes)
    assert naming > 0.15 * len(scenes)  # 3 of the 12 templates have the background slot


def test_version_1_image_text_splits_are_reproduced_with_the_old_radius():
    """checkpoints/README.md regenerates the shipped model's pretraining data with
    --single-object-radius 0.23 0.30: the scenes of generator version 1 (its dominant range) and
    its training captions. The digest is that of version 1's first 200 training captions of
    seed 0 (commit 89fccc8)."""
    texts = []
    for index in range(200):
        scene_rng, caption_rng = image_rngs(0, index)
        old = render_scene(scene_rng, 64)
        scene = render_scene(image_rngs(0, index)[0], 64, single_object_radius=(0.23, 0.30))
        assert np.array_equal(old.image, scene.image) and old.objects == scene.objects
        texts.append(training_caption(scene.objects, scene.background, caption_rng).text)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    assert digest == "08c96326d246aa00ffd52041305d8f37729e2be6db3a6fb7685b1d6a4a841644"



def test_single_object_radius_widens_only_one_object_scenes():
    singles = multis = 0
    for index in range(300):
        plain = render_scene(image_rngs(7, index)[0], 64)
        wide = render_scene(image_rngs(7, index)[0], 64, single_object_radius=(0.10, 0.30))
        if len(plain.objects) == 1:
            assert len(wide.objects) == 1 and 0.10 * 64 <= wide.objects[0].radius <= 0.30 * 64
            singles += wide.objects[0].radius < 0.23 * 64
        else:  # several objects: the same random draws, the same scene
            assert np.array_equal(plain.image, wide.image) and plain.objects == wide.objects
            multis += 1
    assert singles > 30 and multis > 100  # the wider range is used; multi-object scenes exist


