"""Distillation targets and teachers of the TTD meta-architecture (ttd_distillation.py) on the
tiny random CLIP (CPU): stop-gradient on the targets while the adapters get gradients,
MODEL.TTD.TARGET_NORM, the frozen teacher is the base model and encodes each tag once, the EMA
teacher is the base weights plus the EMA of the adapters' deltas and survives a checkpoint."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import build
from meta_arch_fixtures import caption_batch, finite, random_image, shape_batch, ttd_opts
from ttd_d2.modeling.lora import LoRALinear, iter_lora_modules, lora_deltas, lora_disabled, lora_state_dict
from ttd_d2.modeling.meta_arch import ttd_distillation
from ttd_d2.modeling.ttd.losses import minmax_normalize
from ttd_d2.modeling.ttd.scoring import cosine_maps
from ttd_d2.modeling.ttd.tags import caption_to_tags


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


# ---------------------------------------------------------------------------------- teachers
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
