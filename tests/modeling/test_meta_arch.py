"""The TTD meta-architecture end to end on the tiny random CLIP (CPU): sem-seg and caption
inference (docs/INTERFACES.md), tag scoring, TTD / contrastive training, teachers, stop-gradient,
LoRA-only checkpoints."""
import copy
from unittest import mock

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from conftest import build
from ttd_d2.engine.hooks import lora_checkpoint
from ttd_d2.modeling.lora import LoRALinear, iter_lora_modules, lora_deltas, lora_disabled, lora_parameters, lora_state_dict
from ttd_d2.modeling.meta_arch import ttd_distillation
from ttd_d2.modeling.meta_arch.segmentation import max_over_synonyms, sliding_windows, slide_inference
from ttd_d2.modeling.ttd.losses import minmax_normalize
from ttd_d2.modeling.ttd.scoring import cosine_maps
from ttd_d2.modeling.ttd.tags import caption_to_tags

SCORE_KEYS = {"s_image", "s_text", "s_pixel", "image_text", "nltk"}
INTERFACE_KEYS = {"caption_mask", "tags", "tag_scores", "tag_threshold", "tag_caption_cos", "class_logits"}


# ---------------------------------------------------------------------------------- helpers
def ttd_opts(**extra):
    return {"MODEL.TTD.ENABLED": True, **extra}


def random_image(seed, h=32, w=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (240, 230, 40)}


def shape_image(shapes, size=32, seed=0):
    """uint8 [3, size, size]: coloured shapes ("circle" | "square" | "triangle") on grey noise."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(110, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    for i, (colour, kind) in enumerate(shapes):
        c = COLOURS[colour]
        cx, cy = (8 + 16 * (i % 2), 8 + 16 * (i // 2))
        if kind == "circle":
            cv2.circle(img, (cx, cy), 7, c, -1)
        elif kind == "square":
            cv2.rectangle(img, (cx - 6, cy - 6), (cx + 6, cy + 6), c, -1)
        else:
            pts = np.array([[cx, cy - 7], [cx - 7, cy + 6], [cx + 7, cy + 6]], np.int32)
            cv2.fillPoly(img, [pts], c)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def shape_batch():
    specs = [
        [("red", "circle"), ("blue", "square")],
        [("green", "triangle")],
        [("yellow", "square"), ("red", "triangle"), ("blue", "circle")],
        [("blue", "circle"), ("green", "square")],
    ]
    batch = []
    for i, spec in enumerate(specs):
        caption = "a photo of " + " and ".join(f"a {c} {k}" for c, k in spec)
        batch.append({"image": shape_image(spec, seed=i), "caption": caption})
    return batch


def caption_batch(captions, size=32, seed=0):
    return [{"image": random_image(seed + i, size, size), "caption": c} for i, c in enumerate(captions)]



def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def finite(losses):
    return all(torch.isfinite(v).all() for v in losses.values())


# ---------------------------------------------------------------------------------- sem-seg
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


# ---------------------------------------------------------------------------------- sliding windows
@pytest.mark.parametrize("crop", [48, 64, 100])
def test_slide_crop_at_least_image_equals_whole_image(tiny_cfg, register, crop):
    name = register(stuff_classes=["background", "circle, round", "square"], background_threshold=0.4)
    whole = build(tiny_cfg)
    slide = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.SLIDE_CROP": crop, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": crop // 2})
    x = {"image": random_image(6, 32, 48), "height": 40, "width": 60, "dataset_name": name}
    with torch.no_grad():
        a = whole([x])[0]["sem_seg"]
        b = slide([x])[0]["sem_seg"]
    assert a.shape == b.shape == (3, 40, 60)
    assert torch.allclose(a, b, atol=1e-6)


def test_slide_crop_smaller_than_image(tiny_cfg, register):
    name = register(stuff_classes=["circle", "square"])
    slide = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.SLIDE_CROP": 32, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": 16})
    whole = build(tiny_cfg)
    x = {"image": random_image(7, 32, 64), "height": 32, "width": 64, "dataset_name": name}
    with torch.no_grad():
        a = slide([x])[0]["sem_seg"]
        b = whole([x])[0]["sem_seg"]
    assert a.shape == (2, 32, 64)
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, b, atol=1e-4)  # windows really were used


@pytest.mark.parametrize("batch_size, calls", [(0, [4]), (3, [3, 1]), (1, [1] * 4)])
def test_slide_inference_averages_windows(batch_size, calls):
    seen, count = [], [0]

    def predict(windows):  # [N, 3, h, w] -> [N, 1, h, w], value = window number (1-based)
        seen.append(len(windows))
        first = count[0]
        count[0] += len(windows)
        values = torch.arange(first + 1, first + len(windows) + 1, dtype=torch.float)
        return values.view(-1, 1, 1, 1).expand(len(windows), 1, *windows.shape[-2:])

    image = torch.zeros(1, 3, 10, 14)
    out = slide_inference(predict, image, crop=8, stride=6, batch_size=batch_size)
    windows = sliding_windows(10, 14, 8, 6)
    ref_sum, ref_count = torch.zeros(10, 14), torch.zeros(10, 14)
    for i, (y0, x0, y1, x1) in enumerate(windows):
        ref_sum[y0:y1, x0:x1] += i + 1
        ref_count[y0:y1, x0:x1] += 1
    assert len(windows) == 4 and seen == calls
    assert out.shape == (1, 1, 10, 14) and torch.allclose(out[0, 0], ref_sum / ref_count)


def test_slide_inference_batches_images_like_one_at_a_time():
    """The windows of several images share the forwards and each image gets its own average."""
    def predict(windows):  # depends on each window's content: its pixels minus the window's mean
        return windows[:, :2] - windows[:, :2].mean(dim=(-2, -1), keepdim=True)

    images = torch.randn(3, 3, 13, 21, generator=torch.Generator().manual_seed(0))
    together = slide_inference(predict, images, crop=8, stride=5, batch_size=5)
    alone = torch.cat([slide_inference(predict, im[None], crop=8, stride=5) for im in images])
    torch.testing.assert_close(together, alone)
    # bitwise what concatenating every prediction and adding window by window gives
    windows = sliding_windows(13, 21, 8, 5)
    preds = predict(torch.cat([images[..., y0:y1, x0:x1] for y0, x0, y1, x1 in windows])).view(len(windows), 3, 2, 8, 8)
    total, count = torch.zeros(3, 2, 13, 21), torch.zeros(13, 21)
    for pred, (y0, x0, y1, x1) in zip(preds, windows):
        total[..., y0:y1, x0:x1] += pred
        count[y0:y1, x0:x1] += 1
    assert torch.equal(together, total / count)
    assert torch.equal(slide_inference(predict, images, crop=0, stride=0), predict(images))


@pytest.mark.parametrize(
    "height, width, crop, stride",
    [(32, 48, 32, 16), (33, 47, 16, 8), (100, 37, 30, 30), (64, 64, 64, 32), (20, 70, 20, 7), (5, 5, 8, 4), (50, 9, 16, 1)],
)
def test_sliding_windows_cover_every_pixel(height, width, crop, stride):
    windows = sliding_windows(height, width, crop, stride)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for y0, x0, y1, x1 in windows:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        assert y1 - y0 <= crop and x1 - x0 <= crop
        covered[y0:y1, x0:x1] += 1
    assert (covered > 0).all()
    assert len(set(windows)) == len(windows)


def test_slide_inference_stride_larger_than_crop_is_rejected_or_covers():
    image = torch.zeros(1, 3, 100, 100)
    try:
        out = slide_inference(lambda windows: windows[:, :1] + 1.0, image, crop=32, stride=48)
    except ValueError:
        return
    assert torch.isfinite(out).all()


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


# ---------------------------------------------------------------------------------- captions
def test_caption_inference_interface(tiny_cfg, register):
    thing_classes = ["circle", "square", "triangle", "star"]
    name = register(thing_classes=thing_classes, evaluator_type="caption")
    model = build(tiny_cfg, **{"MODEL.TTD.TAG_THRESHOLD": 0.3})
    caption = "A red circle next to a blue square, and the small star."
    with torch.no_grad():
        out = model([{"image": random_image(8, 32, 48), "height": 64, "width": 96, "caption": caption, "dataset_name": name}])
    assert len(out) == 1
    out = out[0]
    assert INTERFACE_KEYS <= set(out)
    tags = caption_to_tags(caption)
    assert out["tags"] == tags and len(tags) == 7
    K = len(tags)
    mask = out["caption_mask"]
    assert mask.shape == (64, 96) and mask.dtype == torch.float32
    assert mask.min() >= 0 and mask.max() <= 1
    assert set(out["tag_scores"]) == SCORE_KEYS
    for method, scores in out["tag_scores"].items():
        assert scores.shape == (K,), method
        assert torch.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1, method
    assert set(out["tag_scores"]["nltk"].tolist()) <= {0.0, 1.0}
    for method in ("s_image", "s_text"):
        assert float(out["tag_scores"][method].sum()) == pytest.approx(1.0, abs=1e-5)
    combined = 0.5 * (out["tag_scores"]["s_image"] + out["tag_scores"]["s_text"])
    assert torch.allclose(out["tag_scores"]["image_text"], combined, atol=1e-6)
    assert out["tag_threshold"] == pytest.approx(0.3)
    assert out["tag_caption_cos"].shape == (K,)
    assert out["tag_caption_cos"].abs().max() <= 1 + 1e-5
    assert out["class_logits"].shape == (len(thing_classes),)
    assert torch.isfinite(out["class_logits"]).all()


def test_caption_inference_without_size_or_classes(tiny_cfg):
    model = build(tiny_cfg)
    with torch.no_grad():
        out = model([{"image": random_image(9, 32, 40), "caption": "a green triangle"}])[0]
    assert out["caption_mask"].shape == (32, 40)
    assert out["tags"] == ["green", "triangle"]


def test_score_tags_api(tiny_cfg):
    model = build(tiny_cfg, train=True)
    rgb = random_image(10, 32, 32).permute(1, 2, 0).numpy().copy()
    caption = "A red circle and a blue square on grass"
    expected_tags = caption_to_tags(caption)
    for method in ("pixel", "image", "text", "image+text", "nltk", "s_pixel"):
        pairs = model.score_tags(rgb, caption, method=method)
        assert [t for t, _ in pairs] == expected_tags, method
        assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for _, s in pairs), method
    assert model.training  # mode restored
    pixel = model.score_tags(rgb, caption, method="pixel")
    with torch.no_grad():
        model.eval()
        ref = model([{"image": torch.from_numpy(rgb.transpose(2, 0, 1).copy()), "caption": caption}])[0]
    assert [s for _, s in pixel] == pytest.approx(ref["tag_scores"]["s_pixel"].tolist(), abs=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32, 3), np.float32),
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 4), np.uint8),
        np.zeros((3, 32, 32), np.uint8),
        np.zeros((1, 32, 32, 3), np.uint8),
    ],
    ids=["float", "gray", "rgba", "chw", "batched"],
)
def test_score_tags_bad_image_raises(tiny_cfg, bad):
    model = build(tiny_cfg)
    with pytest.raises(ValueError):
        model.score_tags(bad, "a red circle")


def test_score_tags_edge_inputs(tiny_cfg):
    model = build(tiny_cfg)
    rgb = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="method"):
        model.score_tags(rgb, "a red circle", method="clip")
    assert model.score_tags(rgb, "") == []
    assert model.score_tags(rgb, "the of and") == []
    assert model.score_tags(rgb, "   ", method="nltk") == []


# ---------------------------------------------------------------------------------- training
def test_ttd_training_losses_and_trainable_parameters(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts())
    names = trainable_names(model)
    lora_ids = {id(p) for p in lora_parameters(model.backbone.clip)}
    assert lora_ids and all(p.requires_grad for p in lora_parameters(model.backbone.clip))
    expected = {n for n, p in model.named_parameters() if id(p) in lora_ids} | {"masker.w", "masker.b"}
    assert names == expected
    assert all("lora_" in n for n in names - {"masker.w", "masker.b"})
    losses = model(caption_batch(["a red circle and a blue square", "a green triangle"]))
    assert set(losses) == {"loss_distill", "loss_tag"}
    assert finite(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in names)


def test_contrastive_training_trains_all_clip_weights(tiny_cfg):
    model = build(tiny_cfg, train=True, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0})
    clip_params = list(model.backbone.clip.named_parameters())
    assert clip_params and all(p.requires_grad for _, p in clip_params)
    assert not list(iter_lora_modules(model.backbone.clip))
    losses = model(caption_batch(["a red circle", "a blue square", "the of and", ""]))
    assert set(losses) == {"loss_contrastive"}
    assert finite(losses)
    losses["loss_contrastive"].backward()
    assert model.backbone.clip.visual.conv1.weight.grad is not None
    assert model.backbone.clip.token_embedding.weight.grad is not None


LONG_CAPTION = " ".join(f"word{i % 150}x shape{i}" for i in range(150))  # 300 words, 300 distinct tags


@pytest.mark.parametrize("teacher", ["frozen", "self"])
@pytest.mark.parametrize("contrastive", [0.0, 1.0])
def test_edge_captions_in_training_batch(tiny_cfg, teacher, contrastive):
    assert len(LONG_CAPTION.split()) == 300
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TEACHER": teacher, "MODEL.CLIP.CONTRASTIVE_WEIGHT": contrastive}))
    batch = caption_batch(["", "the of and", LONG_CAPTION, "a red circle"])
    losses = model(batch)
    assert {"loss_distill", "loss_tag"} <= set(losses)
    assert finite(losses)
    sum(losses.values()).backward()
    stats = model.tag_statistics
    # the tiny CLIP's 14-token window holds "word0x shape0 word1x shape1 word2x" (3+2+3+2+3
    # tokens; "shape2" would be the 15th): 5 of the long caption's 300 tags
    assert float(stats["candidates_per_caption"]) == pytest.approx((0 + 0 + 5 + 2) / 4)


def test_batch_without_any_tag(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts())
    losses = model(caption_batch(["", "the of and", "!!! 123"]))
    assert finite(losses)
    assert losses["loss_distill"].item() == 0.0 and losses["loss_tag"].item() == 0.0
    sum(losses.values()).backward()  # still part of the graph


@pytest.mark.parametrize("scoring", ["s_image", "s_text", "image_text", "nltk"])
def test_training_with_other_tag_scorings(tiny_cfg, scoring):
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TAG_SCORING": scoring}))
    losses = model(caption_batch(["a red circle and a blue square", "a green triangle"]))
    assert finite(losses)
    sum(losses.values()).backward()


# ---------------------------------------------------------------------------------- stop-gradient
@pytest.mark.parametrize("teacher", ["self", "frozen", "ema"])
def test_targets_are_detached_and_lora_gets_gradients(tiny_cfg, monkeypatch, teacher):
    seen = {}
    original = ttd_distillation.ttd_losses

    def spy(caption_mask, tag_masks, targets, union, valid, distance="l1"):
        seen.update(
            caption_mask=caption_mask.requires_grad, tag_masks=tag_masks.requires_grad,
            targets=targets.requires_grad or targets.grad_fn is not None,
            union=union.requires_grad or union.grad_fn is not None,
        )
        return original(caption_mask, tag_masks, targets, union, valid, distance)

    monkeypatch.setattr(ttd_distillation, "ttd_losses", spy)
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TEACHER": teacher}))
    losses = model(caption_batch(["a red circle and a blue square", "a green triangle on grass"]))
    assert seen == {"caption_mask": True, "tag_masks": True, "targets": False, "union": False}
    losses["loss_distill"].backward()
    missing = [n for n, m in iter_lora_modules(model.backbone.clip) if m.lora_A.grad is None or m.lora_B.grad is None]
    assert not missing
    assert any(m.lora_B.grad.abs().sum() > 0 for _, m in iter_lora_modules(model.backbone.clip))
    assert model.masker.w.grad is not None and model.masker.b.grad is not None


@pytest.mark.parametrize("norm", ["minmax", "none"])
def test_target_norm_reaches_the_targets(tiny_cfg, monkeypatch, norm):
    seen = {}
    original = ttd_distillation.distillation_targets

    def spy(tag_masks, selected, target_norm="minmax"):
        targets, union = original(tag_masks, selected, target_norm)
        seen.update(norm=target_norm, masks=tag_masks.detach(), selected=selected, targets=targets)
        return targets, union

    monkeypatch.setattr(ttd_distillation, "distillation_targets", spy)
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TARGET_NORM": norm, "MODEL.TTD.TAG_THRESHOLD": 0.0}))
    model(caption_batch(["a red circle and a blue square", "a green triangle on grass"]))
    assert seen["norm"] == norm and seen["selected"].any()
    expected = minmax_normalize(seen["masks"]) if norm == "minmax" else seen["masks"]
    chosen = seen["selected"]
    assert torch.allclose(seen["targets"][chosen], expected[chosen])


@pytest.mark.parametrize("scoring", ["s_pixel", "image_text"])
def test_frozen_teacher_is_the_base_model(tiny_cfg, scoring):
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TAG_SCORING": scoring}))
    base = build(tiny_cfg, **{"MODEL.TTD.TAG_SCORING": scoring}).requires_grad_(False)
    with torch.no_grad():
        for _, m in iter_lora_modules(model.backbone.clip):
            m.lora_B.fill_(0.1)
    captions = ["a red circle and a blue square", "a green triangle", "the of and"]
    images = torch.stack([model.normalize(random_image(20 + i)) for i in range(3)])
    tag_batch = model._tag_batch(captions)
    D = model.backbone.embed_dim
    with torch.no_grad():
        tokens, grid = model.backbone.forward_trunk(images, model.shared_image_blocks)
        teacher = model._teacher_views(tokens, grid, model.shared_image_blocks, [{"caption": c} for c in captions],
                                       tag_batch)
        ref = base.backbone(images)
        ref_tags = base._tag_embeddings(tag_batch, base._encode_tags, D)
        ref_cos = cosine_maps(ref["dense"], ref_tags)
        live = model.backbone(images)
        with lora_disabled(model.backbone.clip):
            off = model.backbone(images)
    assert teacher["tag_cos"].shape == ref_cos.shape == (3, 4, 4, 4)
    assert torch.allclose(teacher["tag_emb"], ref_tags, atol=1e-5)
    assert torch.allclose(teacher["tag_cos"], ref_cos, atol=1e-5)
    assert torch.allclose(off["dense"], ref["dense"], atol=1e-5)
    assert torch.allclose(off["global"], ref["global"], atol=1e-5)
    assert not torch.allclose(live["dense"], ref["dense"], atol=1e-3)  # the adapters matter
    if scoring == "image_text":
        assert torch.allclose(teacher["global"], F.normalize(ref["global"], dim=-1), atol=1e-5)
        assert torch.allclose(teacher["caption"], base.backbone.encode_text(captions), atol=1e-5)
    # the cached teacher tags are still the base model's, and the adapters are back on
    assert all(m.enabled for _, m in iter_lora_modules(model.backbone.clip))
    cache = model._teacher_text_cache
    for tag in tag_batch["unique"]:
        assert torch.allclose(cache._store[tag], base._encode_tags([tag])[0], atol=1e-5)


def test_image_layers_one_adapts_only_last_block(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.LORA.IMAGE_LAYERS": 1}))
    names = [n for n, _ in iter_lora_modules(model.backbone.clip)]
    visual = [n for n in names if n.startswith("visual.")]
    text = [n for n in names if not n.startswith("visual.")]
    assert len(visual) == 4 and all(n.startswith("visual.transformer.resblocks.1.") for n in visual)
    assert len(text) == 8  # both text blocks
    assert model.shared_image_blocks == 1
    assert not any(p.requires_grad for p in model.backbone.clip.visual.transformer.resblocks[0].parameters())
    losses = model(caption_batch(["a red circle and a blue square", "a green triangle"]))
    assert finite(losses)
    sum(losses.values()).backward()
    for n, m in iter_lora_modules(model.backbone.clip):
        assert m.lora_B.grad is not None, n
    # the trunk output is shared; the adapted last block still changes the dense output
    with torch.no_grad():
        for _, m in iter_lora_modules(model.backbone.clip):
            m.lora_B.fill_(0.1)
        x = model.normalize(random_image(30))[None]
        live = model.backbone(x)["dense"]
        with lora_disabled(model.backbone.clip):
            off = model.backbone(x)["dense"]
    assert not torch.allclose(live, off, atol=1e-3)


@pytest.mark.parametrize("layers", [-1, 3])
def test_image_layers_out_of_range_raises(tiny_cfg, layers):
    with pytest.raises(ValueError, match="IMAGE_LAYERS"):
        build(tiny_cfg, **ttd_opts(**{"MODEL.TTD.LORA.IMAGE_LAYERS": layers}))


def test_frozen_teacher_text_cache_encodes_each_tag_once(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts())
    cache = model._teacher_text_cache
    encoded = []
    inner = cache.encode

    def counting(tags):
        encoded.extend(tags)
        return inner(tags)

    cache.encode = counting
    steps = [
        ["a red circle and a red square", "a blue circle"],
        ["a blue square near the red circle", "green triangle", "a green circle"],
    ]
    for captions in steps:
        losses = model(caption_batch(captions))
        sum(losses.values()).backward()
    distinct = {t for captions in steps for c in captions for t in caption_to_tags(c)}
    assert len(cache) == len(distinct) == 7
    assert set(cache._store) == distinct
    assert sorted(encoded) == sorted(distinct)  # nothing encoded twice


# ---------------------------------------------------------------------------------- teachers
@pytest.mark.parametrize("teacher", ["self", "frozen", "ema"])
def test_teachers_two_steps(tiny_cfg, teacher):
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TEACHER": teacher, "MODEL.TTD.EMA_DECAY": 0.9}))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    batch = shape_batch()[:2]
    for step in range(2):
        losses = model(batch)
        assert finite(losses), (step, losses)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        before = {k: v.clone() for k, v in model.ema_state.items()}
        live = lora_deltas(model.backbone.clip)  # the EMA is of the deltas s*B*A
        model.update_teacher()
        if teacher != "ema":
            assert model.ema_state == {}
            continue
        assert set(model.ema_state) == set(live) and before
        changed = [k for k in live if not torch.equal(before[k], model.ema_state[k])]
        assert changed
        for k in live:
            assert torch.allclose(model.ema_state[k], 0.9 * before[k] + 0.1 * live[k], atol=1e-7)
        assert not set(model.ema_state) & set(lora_state_dict(model.backbone.clip))
    if teacher == "ema":
        captions = [x["caption"] for x in batch]
        images = torch.stack([model.normalize(x["image"]) for x in batch])
        tag_batch = model._tag_batch(captions)
        live_state = lora_state_dict(model.backbone.clip)
        with torch.no_grad():
            tokens, grid = model.backbone.forward_trunk(images, 0)
            t = model._teacher_views(tokens, grid, 0, batch, tag_batch)
            live_tags = model._tag_embeddings(tag_batch, model._encode_tags, model.backbone.embed_dim)
            live_cos = cosine_maps(model.backbone.forward_head(tokens, grid, 0, False)["dense"], live_tags)
        # the teacher is W + EMA(delta): the same model with the EMA added to its base weights
        reference = copy.deepcopy(model)
        with torch.no_grad():
            for name, delta in model.ema_state.items():
                owner, tensor = name.rsplit(".", 1)
                mod = reference.backbone.clip.get_submodule(owner)
                base = mod.base.weight if isinstance(mod, LoRALinear) else getattr(mod.parametrizations, tensor).original
                base.add_(delta)
            with lora_disabled(reference.backbone.clip):
                ema_tags = reference._tag_embeddings(tag_batch, reference._encode_tags, model.backbone.embed_dim)
                ema_cos = cosine_maps(reference.backbone.forward_head(tokens, grid, 0, False)["dense"], ema_tags)
        assert not torch.allclose(t["tag_cos"], live_cos, atol=1e-5)
        assert not torch.allclose(t["tag_emb"], live_tags, atol=1e-5)
        assert torch.allclose(t["tag_cos"], ema_cos, atol=1e-5)
        assert torch.allclose(t["tag_emb"], ema_tags, atol=1e-5)
        after = lora_state_dict(model.backbone.clip)
        assert all(torch.equal(live_state[k], after[k]) for k in live_state)  # live adapters untouched


def test_short_training_run_lowers_ttd_loss(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    batch = shape_batch()
    totals = []
    for _ in range(30):
        losses = model(batch)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        model.update_teacher()
        totals.append(total.item())
    assert sum(totals[-5:]) / 5 < totals[0], totals


# ---------------------------------------------------------------------------------- LoRA checkpoints
def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in iter_lora_modules(model.backbone.clip):
            m.lora_B.copy_(0.05 * torch.randn(m.lora_B.shape, generator=g))
        model.masker.w.add_(2.0)
        model.masker.b.sub_(0.5)


def _caption_outputs(model):
    inputs = [
        {"image": random_image(40, 32, 48), "height": 64, "width": 96, "caption": "a red circle and a blue square"},
        {"image": random_image(41), "caption": "a green triangle"},
    ]
    with torch.no_grad():
        return model.eval()(inputs)


def test_lora_checkpoint_round_trip(tiny_cfg, tmp_path):
    model = build(tiny_cfg, train=True, **ttd_opts())
    _perturb(model)
    ckpt = lora_checkpoint(model)
    assert set(ckpt) == {"format", "version", "settings", "lora", "masker"}  # docs/LORA_FILES.md
    assert set(ckpt["masker"]) == {"w", "b"}
    assert all(not v.requires_grad for v in ckpt["lora"].values())
    path = tmp_path / "model_lora_test.pth"
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    assert set(loaded["lora"]) == set(lora_state_dict(model.backbone.clip))

    expected = _caption_outputs(model)
    fresh = build(tiny_cfg, **ttd_opts(**{"MODEL.TTD.LORA.WEIGHTS": str(path)}))
    got = _caption_outputs(fresh)
    for e, g in zip(expected, got):
        assert torch.equal(e["caption_mask"], g["caption_mask"])
        for m in SCORE_KEYS:
            assert torch.equal(e["tag_scores"][m], g["tag_scores"][m])
    base = _caption_outputs(build(tiny_cfg))
    assert not torch.allclose(base[0]["caption_mask"], expected[0]["caption_mask"], atol=1e-3)

    merged = build(tiny_cfg, **ttd_opts(**{"MODEL.TTD.LORA.WEIGHTS": str(path), "MODEL.TTD.LORA.MERGE_FOR_INFERENCE": True}))
    clip = merged.backbone.clip
    assert not list(iter_lora_modules(clip))
    assert not any(isinstance(m, LoRALinear) or parametrize.is_parametrized(m) for m in clip.modules())
    assert not any("lora" in n or "parametrizations" in n for n in clip.state_dict())
    got = _caption_outputs(merged)
    for e, g in zip(expected, got):
        assert torch.allclose(e["caption_mask"], g["caption_mask"], atol=1e-5)
        assert torch.allclose(e["tag_scores"]["s_pixel"], g["tag_scores"]["s_pixel"], atol=1e-5)


def test_lora_weights_missing_file_raises(tiny_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="LORA.WEIGHTS"):
        build(tiny_cfg, **ttd_opts(**{"MODEL.TTD.LORA.WEIGHTS": str(tmp_path / "nope.pth")}))


# ---------------------------------------------------------------------------------- more edges
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


def test_caption_inference_with_no_candidate_tag(tiny_cfg):
    model = build(tiny_cfg)
    with torch.no_grad():
        out = model([{"image": random_image(51), "caption": "the of and"}])[0]
    assert out["tags"] == [] and out["caption_mask"].shape == (32, 32)
    assert set(out["tag_scores"]) == SCORE_KEYS
    assert all(v.shape == (0,) for v in out["tag_scores"].values())
    assert out["tag_caption_cos"].shape == (0,)


def test_plain_checkpoint_loads_into_ttd_model(tiny_cfg, tmp_path):
    """A full-model checkpoint without adapters (e.g. a contrastive run) loads through
    MODEL.WEIGHTS into a TTD model: the LoRA pre-hooks map the plain weight names."""
    from detectron2.checkpoint import DetectionCheckpointer

    plain = build(tiny_cfg, seed=3, train=True, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0})
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("model_plain")
    model = build(tiny_cfg, seed=4, **ttd_opts())
    DetectionCheckpointer(model).resume_or_load(str(tmp_path / "model_plain.pth"), resume=False)
    x = model.normalize(random_image(52))[None]
    with torch.no_grad():
        assert torch.allclose(model.eval().backbone(x)["dense"], plain.eval().backbone(x)["dense"], atol=1e-5)
    assert all(not p.requires_grad for n, p in model.backbone.clip.named_parameters() if "lora_" not in n)


def test_ema_teacher_survives_checkpoint(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TEACHER": "ema", "MODEL.TTD.EMA_DECAY": 0.5}))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        losses = model(shape_batch()[:2])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        model.update_teacher()
    restored = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TEACHER": "ema", "MODEL.TTD.EMA_DECAY": 0.5}))
    restored.load_state_dict(model.state_dict())
    assert set(restored.ema_state) == set(model.ema_state)
    assert all(torch.equal(restored.ema_state[k], v) for k, v in model.ema_state.items())


@pytest.mark.parametrize("ttd, scoring", [(False, None), (True, "s_pixel"), (True, "s_text")])
def test_loader_tokens_give_the_same_losses_as_captions(tiny_cfg, ttd, scoring):
    """The training loader tokenises captions in its workers ("caption_tokens"); the model's
    losses from them equal its losses from the caption strings (s_text: the frozen teacher
    encodes the captions too, from the same tokens)."""
    opts = {"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0, **(ttd_opts(**{"MODEL.TTD.TAG_SCORING": scoring}) if ttd else {})}
    model = build(tiny_cfg, train=True, **opts)
    batch = caption_batch(["a red circle and a blue square", "a green star", "two circles near a square"])
    tokens = model.backbone.tokenizer([x["caption"] for x in batch]).numpy()
    tokenised = [dict(x, caption_tokens=t) for x, t in zip(batch, tokens)]
    with mock.patch.object(model.backbone, "encode_text", wraps=model.backbone.encode_text) as encode_text:
        torch.manual_seed(1)
        from_tokens = model(tokenised)
        assert all(call.args[0] != [x["caption"] for x in batch] for call in encode_text.call_args_list)
    torch.manual_seed(1)
    from_text = model(batch)
    assert from_tokens.keys() == from_text.keys()
    for name in from_text:
        assert torch.allclose(from_tokens[name], from_text[name], atol=1e-6), name


def test_encode_token_ids_matches_encode_text(tiny_cfg):
    backbone = build(tiny_cfg).backbone
    texts = ["a red circle", "x", "a photo of a star near a moon and an arrow"]
    assert torch.allclose(backbone.encode_token_ids(backbone.tokenizer(texts)), backbone.encode_text(texts), atol=1e-6)


@pytest.mark.parametrize("ttd", [False, True])
def test_packed_batches_give_the_same_losses(tiny_cfg, ttd):
    """A batch packed in the loader workers (ttd_d2.data.collate, after a pickling round trip as
    between processes) gives exactly the losses of the same samples as separate arrays."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from ttd_d2.data.collate import packed_batch_collator

    opts = {"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0, **(ttd_opts() if ttd else {})}
    model = build(tiny_cfg, train=True, **opts)
    batch = caption_batch(["a red circle and a blue square", "a green star", "two circles near a square"])
    tokens = model.backbone.tokenizer([x["caption"] for x in batch]).numpy()
    samples = [dict(x, image=x["image"].numpy(), caption_tokens=t) for x, t in zip(batch, tokens)]
    packed = pickle.loads(ForkingPickler.dumps(packed_batch_collator(samples)))
    assert packed.stacks.keys() == {"image", "caption_tokens"}
    torch.manual_seed(1)
    from_packed = model(packed)
    torch.manual_seed(1)
    from_arrays = model(samples)
    assert from_packed.keys() == from_arrays.keys()
    for name in from_arrays:
        assert torch.equal(from_packed[name], from_arrays[name]), name


def test_worker_side_tags_equal_the_models_and_give_the_same_losses(tiny_cfg, tmp_path):
    """CaptionTrainMapper extracts the candidate tags in the loader workers; they are exactly the
    model's (stopwords, the text window's cut, MAX_TAGS) and the losses from them are the same."""
    from ttd_d2.data.mappers import CaptionTrainMapper

    cfg = tiny_cfg.clone()
    cfg.merge_from_list([x for k, v in ttd_opts(**{"MODEL.TTD.MAX_TAGS": 3}).items() for x in (k, v)])
    model = build(cfg, train=True)
    mapper = CaptionTrainMapper(cfg, True)
    captions = ["a red circle and a blue square", "a green star", "the", "two circles near a square on a wide "
                "striped background with many more words than the tiny text window holds at all"]
    assert mapper.tokenizer.context_length == model.backbone.clip.context_length
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((40, 48, 3), dtype=np.uint8))
    worker_tags = [mapper({"file_name": str(image), "caption": c})["candidate_tags"] for c in captions]
    assert worker_tags == model.candidate_tags(captions)
    assert worker_tags[2] == [] and len(worker_tags[0]) == 3  # stopwords only; MAX_TAGS
    batch = caption_batch(captions)
    torch.manual_seed(1)
    from_workers = model([dict(x, candidate_tags=t) for x, t in zip(batch, worker_tags)])
    torch.manual_seed(1)
    here = model(batch)
    for name in here:
        assert torch.equal(from_workers[name], here[name]), name



def test_the_loader_workers_share_changes_no_loss(tiny_cfg, tmp_path):
    """Issue "performance": the same losses on a fixed batch whether the step gets bare samples
    (images and caption strings, tokenised and tagged in the step, as before 2026-12-02) or what
    the trainer's loader workers now send (tokens, candidate tags, one packed tensor per field,
    through the pickling between processes)."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from ttd_d2.data.collate import packed_batch_collator
    from ttd_d2.data.mappers import CaptionTrainMapper

    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["MODEL.TTD.ENABLED", True, "INPUT.TRAIN_SIZE", 32, "INPUT.RANDOM_FLIP", "none",
                         "MODEL.TTD.TAG_SCORING", "image_text"])
    model = build(cfg, train=True)
    mapper = CaptionTrainMapper(cfg, True)
    captions = ["a red circle and a blue square", "a green star on a striped background", "two circles"]
    samples = []
    for i, caption in enumerate(captions):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), random_image(i, 32, 32).permute(1, 2, 0).numpy())
        samples.append(mapper({"file_name": str(path), "caption": caption}))
    bare = [{"image": torch.from_numpy(x["image"].copy()), "caption": x["caption"]} for x in samples]
    sent = pickle.loads(ForkingPickler.dumps(packed_batch_collator(samples)))
    torch.manual_seed(3)
    before = model(bare)
    torch.manual_seed(3)
    after = model(sent)
    assert before.keys() == after.keys() == {"loss_distill", "loss_tag"}
    for name in before:
        assert torch.equal(before[name], after[name]), name
