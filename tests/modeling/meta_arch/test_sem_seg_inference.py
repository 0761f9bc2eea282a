"""Semantic segmentation with the TTD meta-architecture on the tiny random CLIP (CPU,
docs/INTERFACES.md): scores at the original size, the background threshold (metadata or
config, 0.0 included), the default dataset, synonyms max-pooled (``max_over_synonyms``,
``class_embeddings``; after the softmax of CLASS_SCORES softmax), flip inference."""
import pytest
import torch
import torch.nn.functional as F

from conftest import build
from meta_arch_fixtures import random_image
from ttd_d2.modeling.meta_arch.segmentation import max_over_synonyms


@pytest.mark.parametrize("with_background", [False, True])
def test_sem_seg_output_at_original_size(tiny_cfg, register, with_background):
    if with_background:
        classes = ["background", "circle, round", "square"]
        name = register(stuff_classes=classes, background_threshold=0.4, evaluator_type="sem_seg")
    else:
        classes = ["circle, round", "square", "triangle"]
        name = register(stuff_classes=classes, evaluator_type="sem_seg")
    model = build(tiny_cfg)
    image = random_image(1, 32, 48)
    with torch.no_grad():
        out = model([{"image": image, "height": 64, "width": 96, "dataset_name": name}])
        small = model([{"image": image, "dataset_name": name}])[0]["sem_seg"]
    assert isinstance(out, list) and len(out) == 1 and set(out[0]) == {"sem_seg"}
    sem = out[0]["sem_seg"]
    assert sem.shape == (len(classes), 64, 96)
    assert small.shape == (len(classes), 32, 48)
    assert torch.isfinite(sem).all() and sem.min() >= 0 and sem.max() <= 1
    # the output at the original size is the bilinear resize of the scores at the input size
    expected = F.interpolate(small[None], size=(64, 96), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(sem, expected, atol=1e-6)
    if with_background:
        assert torch.allclose(sem[0], torch.full_like(sem[0], 0.4), atol=1e-6)
        assert float(sem[0].max() - sem[0].min()) < 1e-6
        assert not torch.allclose(sem[1:], torch.full_like(sem[1:], 0.4), atol=1e-3)


def test_sem_seg_synonyms_are_max_pooled(tiny_cfg, register):
    grouped = register(stuff_classes=["circle, round", "square"])
    separate = register(stuff_classes=["circle", "round", "square"])
    model = build(tiny_cfg)
    image = random_image(2, 32, 48)
    with torch.no_grad():
        a = model([{"image": image, "dataset_name": grouped}])[0]["sem_seg"]
        b = model([{"image": image, "dataset_name": separate}])[0]["sem_seg"]
    assert a.shape == (2, 32, 48) and b.shape == (3, 32, 48)
    assert torch.allclose(a[0], torch.maximum(b[0], b[1]), atol=1e-6)
    assert torch.allclose(a[1], b[2], atol=1e-6)
    assert not torch.allclose(b[0], b[1], atol=1e-4)  # the max is not trivial


def test_sem_seg_config_background_threshold_overrides_metadata(tiny_cfg, register):
    name = register(stuff_classes=["background", "circle", "square"], background_threshold=0.4)
    model = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD": 0.25})
    with torch.no_grad():
        sem = model([{"image": random_image(3), "dataset_name": name}])[0]["sem_seg"]
    assert sem.shape == (3, 32, 32)
    assert torch.allclose(sem[0], torch.full_like(sem[0], 0.25), atol=1e-6)


def test_sem_seg_uses_default_dataset_from_cfg(tiny_cfg, register):
    name = register(stuff_classes=["circle", "square"])
    model = build(tiny_cfg, **{"DATASETS.TEST": (name,)})
    with torch.no_grad():
        sem = model([{"image": random_image(4)}])[0]["sem_seg"]
    assert sem.shape == (2, 32, 32)


def test_sem_seg_without_stuff_classes_raises(tiny_cfg, register):
    name = register(thing_classes=["circle"])
    model = build(tiny_cfg)
    with pytest.raises(ValueError, match="stuff_classes"):
        with torch.no_grad():
            model([{"image": random_image(5), "dataset_name": name}])


def test_flip_inference_is_flip_equivariant(tiny_cfg, register):
    name = register(stuff_classes=["background", "circle", "square"], background_threshold=0.4)
    model = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.FLIP": True})
    plain = build(tiny_cfg)
    image = random_image(50, 32, 48)
    with torch.no_grad():
        a = model([{"image": image, "dataset_name": name}])[0]["sem_seg"]
        b = model([{"image": image.flip(-1), "dataset_name": name}])[0]["sem_seg"]
        c = plain([{"image": image, "dataset_name": name}])[0]["sem_seg"]
        d = plain([{"image": image.flip(-1), "dataset_name": name}])[0]["sem_seg"]
    assert torch.allclose(a, b.flip(-1), atol=1e-6)
    assert torch.allclose(a, 0.5 * (c + d.flip(-1)), atol=1e-6)


# ---------------------------------------------------------------------------------- synonyms
def test_max_over_synonyms_matches_loop():
    g = torch.Generator().manual_seed(0)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    scores = torch.rand(len(owner), 5, 6, generator=g)
    pooled = max_over_synonyms(scores, owner, 4)
    expected = torch.stack([torch.stack([scores[s] for s in range(len(owner)) if owner[s] == c]).amax(0) for c in range(4)])
    assert torch.equal(pooled, expected)
    # unordered owners
    perm = torch.randperm(len(owner), generator=g)
    assert torch.equal(max_over_synonyms(scores[perm], owner[perm], 4), expected)


def test_max_over_synonyms_without_owner_is_the_identity_pooling():
    scores = torch.rand(4, 5, 6, generator=torch.Generator().manual_seed(0))
    assert max_over_synonyms(scores, None, 4) is scores
    assert torch.equal(max_over_synonyms(scores, torch.arange(4), 4), scores)


def test_class_embeddings_skip_pooling_only_without_synonyms(tiny_cfg, register):
    model = build(tiny_cfg)
    plain = register(stuff_classes=["cat", "dog", "bird"])
    synonyms = register(stuff_classes=["cat", "dog, puppy", "bird"])
    with torch.no_grad():
        assert model.class_embeddings(plain)[1] is None
        emb, owner, num_classes, _ = model.class_embeddings(synonyms)
    assert owner.tolist() == [0, 1, 1, 2] and num_classes == 3 and emb.shape[0] == 4


def test_sem_seg_background_threshold_zero_is_a_zero_background(tiny_cfg, register):
    """BACKGROUND_THRESHOLD 0.0 is a setting (background never wins), not "use the dataset's": only
    negative values fall back to the metadata."""
    name = register(stuff_classes=["background", "circle", "square"], background_threshold=0.4)
    with torch.no_grad():
        zero = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD": 0.0})
        sem = zero([{"image": random_image(3), "dataset_name": name}])[0]["sem_seg"]
        fallback = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD": -1.0})
        meta = fallback([{"image": random_image(3), "dataset_name": name}])[0]["sem_seg"]
    assert torch.equal(sem[0], torch.zeros_like(sem[0]))
    assert torch.allclose(meta[0], torch.full_like(meta[0], 0.4))
    torch.testing.assert_close(sem[1:], meta[1:])


def test_softmax_class_scores_max_pool_synonyms_after_the_softmax(tiny_cfg, register):
    """CLASS_SCORES softmax with "circle, round": the softmax runs over all three names, then the
    class "circle, round" takes the larger of its two names' probabilities (C = 2 channels + background)."""
    name = register(stuff_classes=["background", "circle, round", "square"], background_threshold=0.4)
    model = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.CLASS_SCORES": "softmax", "MODEL.SEG_INFERENCE.LOGIT_SCALE": 40.0,
                               "MODEL.SEG_INFERENCE.PROB_THRESHOLD": 0.3})
    x = random_image(4, 32, 32)
    with torch.no_grad():
        got = model([{"image": x, "dataset_name": name}])[0]["sem_seg"]
        dense = model.backbone(model.normalize(x)[None], with_global=False)["dense"][0]  # [D, h, w]
        text = model.backbone.encode_text(["circle", "round", "square"], use_templates=True)
    cos = torch.einsum("dhw,kd->khw", F.normalize(dense, dim=0), F.normalize(text, dim=-1))
    probs = (40.0 * F.interpolate(cos[None], size=(32, 32), mode="bilinear", align_corners=False)[0]).softmax(0)
    assert not torch.allclose(probs[0], probs[1], atol=1e-3)  # the maximum is not trivial
    assert got.shape == (3, 32, 32)
    assert torch.equal(got[0], torch.full_like(got[0], 0.3))
    torch.testing.assert_close(got[1], torch.maximum(probs[0], probs[1]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[2], probs[2], atol=1e-5, rtol=1e-4)
