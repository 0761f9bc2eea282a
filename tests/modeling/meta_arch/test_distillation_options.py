"""The TTD training step against the method's definitions (docs/METHOD.md, "Self-distillation"),
recomputed here caption by caption from public pieces of the tiny random CLIP (the backbone's
dense map and text embeddings, the masker's w and b, CLIP's temperature): tag scores, selection
at MODEL.TTD.TAG_THRESHOLD, targets, MODEL.TTD.LOSS.DISTANCE and the two loss weights, and the
statistics the TTD hook logs. The frozen teacher (adapters off) and a student with non-zero
adapters, so that teacher and student differ."""
import pytest
import torch
import torch.nn.functional as F

from conftest import build
from meta_arch_fixtures import shape_batch, ttd_opts
from ttd_d2.modeling.lora import iter_lora_modules, lora_disabled
from ttd_d2.modeling.ttd.tags import caption_to_tags


def distance(pred, target, kind):
    """Mean over pixels of the per-pixel distance (BCE with p clamped to [1e-6, 1 - 1e-6])."""
    if kind == "l1":
        return (pred - target).abs().mean()
    if kind == "mse":
        return ((pred - target) ** 2).mean()
    p = pred.clamp(1e-6, 1 - 1e-6)
    return (-(target * p.log() + (1 - target) * (1 - p).log())).mean()


def cos(dense, emb):
    """cos(F(p), t_k): dense [D, h, w], emb [K, D] -> [K, h, w]."""
    return torch.einsum("dhw,kd->khw", F.normalize(dense, dim=0), F.normalize(emb, dim=-1))


def reference(model, batch, scoring, threshold=0.5, kind="l1", nltk=None):
    """Per caption: scores [K], selected [K], then the unweighted losses (means over captions)
    and the mean IoU of {M_c > 0.5} and {U > 0.5}. ``nltk``: per caption, the tags that are
    nouns or adjectives (scoring "nltk": score 1 for those, else 0)."""
    bb, w, b = model.backbone, float(model.masker.w.detach()), float(model.masker.b.detach())
    tau = float(bb.clip.logit_scale.exp())

    def mask(c):
        return torch.sigmoid(w * c + b)

    images = torch.stack([model.normalize(x["image"]) for x in batch])
    captions = [x["caption"] for x in batch]
    with torch.no_grad():
        student = bb(images)["dense"]
        student_caption = bb.encode_text(captions)
        with lora_disabled(bb.clip):
            out = bb(images)
            teacher_dense, teacher_global = out["dense"], F.normalize(out["global"], dim=-1)
            teacher_caption = bb.encode_text(captions)
    scores, selected, distill, tag, iou = [], [], [], [], []
    for i, caption in enumerate(captions):
        tags = caption_to_tags(caption)
        with torch.no_grad():
            student_tags = bb.encode_text(tags, use_templates=True)
            with lora_disabled(bb.clip):
                teacher_tags = bb.encode_text(tags, use_templates=True)
        teacher_cos = cos(teacher_dense[i], teacher_tags)  # [K, h, w]
        s_pixel = (tau * teacher_cos).softmax(dim=0).flatten(1).amax(dim=1)
        s_image = (tau * F.normalize(teacher_tags, dim=-1) @ teacher_global[i]).softmax(dim=0)
        s_text = (tau * F.normalize(teacher_tags, dim=-1) @ teacher_caption[i]).softmax(dim=0)
        s = {"s_pixel": s_pixel, "s_image": s_image, "s_text": s_text, "image_text": (s_image + s_text) / 2,
             "nltk": torch.tensor([float(t in nltk[i]) for t in tags]) if nltk else None}[scoring]
        keep = s >= threshold
        teacher_masks = mask(teacher_cos)
        lo, hi = teacher_masks.amin(dim=(1, 2), keepdim=True), teacher_masks.amax(dim=(1, 2), keepdim=True)
        targets = (teacher_masks - lo) / (hi - lo) * keep[:, None, None]
        union = targets.amax(dim=0)
        caption_mask = mask(cos(student[i], student_caption[i : i + 1])[0])
        tag_masks = mask(cos(student[i], student_tags))
        distill.append(distance(caption_mask, union, kind))
        tag.append(torch.stack([distance(m, t, kind) for m, t in zip(tag_masks, targets)]).mean())
        region, target_region = caption_mask > 0.5, union > 0.5
        iou.append((region & target_region).sum() / (region | target_region).sum().clamp_min(1))
        scores.append(s)
        selected.append(keep)
    return {"scores": scores, "selected": selected, "loss_distill": float(torch.stack(distill).mean()),
            "loss_tag": float(torch.stack(tag).mean()), "iou": float(torch.stack(iou).float().mean())}


def adapted_model(cfg, **opts):
    model = build(cfg, train=True, **ttd_opts(**{"MODEL.TTD.TEACHER": "frozen", **opts}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, m in iter_lora_modules(model.backbone.clip):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    return model


def check_step(model, ref, distill_weight=1.0, tag_weight=1.0, batch=None):
    """One training step of ``model`` on ``batch`` (``shape_batch()``) gives the ``reference``."""
    batch = batch or shape_batch()
    losses = model(batch)
    stats = model.tag_statistics
    for i, (s, keep) in enumerate(zip(ref["scores"], ref["selected"])):
        assert torch.allclose(stats["scores"][i, : len(s)], s, atol=1e-5), i
        assert stats["valid"][i].sum() == len(s)
    count = sum(int(k.sum()) for k in ref["selected"]) / len(batch)
    assert float(stats["selected_per_caption"]) == pytest.approx(count)
    assert losses["loss_distill"].item() == pytest.approx(distill_weight * ref["loss_distill"], rel=1e-4)
    assert losses["loss_tag"].item() == pytest.approx(tag_weight * ref["loss_tag"], rel=1e-4)
    assert float(stats["target_caption_iou"]) == pytest.approx(ref["iou"], abs=1e-6)
    sum(losses.values()).backward()
    grads = [m.lora_B.grad for _, m in iter_lora_modules(model.backbone.clip)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", ["l1", "mse", "bce"])
def test_loss_distance_reaches_the_losses(tiny_cfg, kind):
    model = adapted_model(tiny_cfg, **{"MODEL.TTD.LOSS.DISTANCE": kind})
    ref = reference(model, shape_batch(), "s_pixel", kind=kind)
    l1 = reference(model, shape_batch(), "s_pixel", kind="l1")
    assert kind == "l1" or abs(ref["loss_distill"] - l1["loss_distill"]) > 1e-3  # distinguishable
    check_step(model, ref)


def test_loss_weights_scale_their_own_loss(tiny_cfg):
    model = adapted_model(tiny_cfg, **{"MODEL.TTD.LOSS.DISTILL_WEIGHT": 0.3, "MODEL.TTD.LOSS.TAG_WEIGHT": 2.5})
    check_step(model, reference(model, shape_batch(), "s_pixel"), distill_weight=0.3, tag_weight=2.5)


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_tag_threshold_selects_the_training_tags(tiny_cfg, threshold):
    model = adapted_model(tiny_cfg, **{"MODEL.TTD.TAG_THRESHOLD": threshold})
    ref = reference(model, shape_batch(), "s_pixel", threshold)
    at_half = reference(model, shape_batch(), "s_pixel", 0.5)["selected"]
    assert any(not torch.equal(a, b) for a, b in zip(ref["selected"], at_half))  # the threshold matters
    check_step(model, ref)


@pytest.mark.parametrize("scoring", ["s_image", "s_text", "image_text"])
def test_training_tag_scores_follow_their_definition(tiny_cfg, scoring):
    """Eqs. 1 and 7 and their mean, at CLIP's temperature (scores at tau = 1 would be about 1/K)."""
    model = adapted_model(tiny_cfg, **{"MODEL.TTD.TAG_SCORING": scoring, "MODEL.TTD.TAG_THRESHOLD": 0.2})
    ref = reference(model, shape_batch(), scoring, 0.2)
    chosen = torch.cat(ref["selected"])
    assert chosen.any() and not chosen.all()
    check_step(model, ref)


def test_nltk_scoring_selects_nouns_and_adjectives(tiny_cfg):
    captions = ["a dog runs quickly on green grass", "two birds fly over a tall tree"]
    batch = [{"image": x["image"], "caption": c} for x, c in zip(shape_batch(), captions)]
    nouns_and_adjectives = [{"dog", "green", "grass"}, {"birds", "tall", "tree"}]  # not runs, quickly, two, fly
    model = adapted_model(tiny_cfg, **{"MODEL.TTD.TAG_SCORING": "nltk"})
    ref = reference(model, batch, "nltk", nltk=nouns_and_adjectives)
    assert [int(k.sum()) for k in ref["selected"]] == [3, 3] and [len(k) for k in ref["selected"]] == [5, 5]
    check_step(model, ref, batch=batch)
