"""The numbers of caption inference (``analyse_caption``; docs/INTERFACES.md), which the
tag-selection and caption evaluations read, against their definitions recomputed here from the
tiny random CLIP's public pieces: s_image (Eq. 1, the global embedding), s_text (Eq. 7, the
caption embedding), s_pixel (Eq. 2), their mean, the signed tag-caption cosine, the tag masks
and the zero-shot class logits at CLIP's temperature."""
import torch
import torch.nn.functional as F

from conftest import build
from meta_arch_fixtures import random_image
from ttd_d2.modeling.ttd.tags import caption_to_tags

CAPTION = "A red circle next to a blue square, and the small star."
CLASSES = ["circle", "square", "triangle", "star"]
SEED = 8  # a tiny CLIP whose caption and tag embeddings point apart (negative cosines)


def test_caption_analysis_values_follow_their_definitions(tiny_cfg):
    model = build(tiny_cfg, seed=SEED)
    image = model.normalize(random_image(8, 32, 48))[None]
    bb = model.backbone
    with torch.no_grad():
        out = model.analyse_caption(image, CAPTION, (32, 48), CLASSES)
        feats = bb(image)
        caption = bb.encode_text([CAPTION])[0]  # [D]
        tags = bb.encode_text(caption_to_tags(CAPTION), use_templates=True)  # [K, D]
        classes = bb.encode_text(CLASSES, use_templates=True)
    tau = float(bb.clip.logit_scale.exp())
    assert tau > 10  # CLIP's init 1 / 0.07: tau = 1 would give other scores
    g = F.normalize(feats["global"][0], dim=0)
    t, c = F.normalize(tags, dim=-1), F.normalize(caption, dim=0)
    cos_maps = torch.einsum("dhw,kd->khw", F.normalize(feats["dense"][0], dim=0), t)
    s_image, s_text = (tau * t @ g).softmax(0), (tau * t @ c).softmax(0)
    s_pixel = (tau * cos_maps).softmax(0).flatten(1).amax(1)
    assert not torch.allclose(s_image, s_text, atol=1e-3)  # the two are told apart
    scores = out["tag_scores"]
    assert out["tags"] == caption_to_tags(CAPTION)
    torch.testing.assert_close(scores["s_image"], s_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores["s_text"], s_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores["s_pixel"], s_pixel, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores["image_text"], (s_image + s_text) / 2, atol=1e-5, rtol=1e-4)
    signed = t @ c
    assert (signed < -0.05).any()  # negative cosines stay negative
    torch.testing.assert_close(out["tag_caption_cos"], signed, atol=1e-5, rtol=1e-4)
    masks = torch.sigmoid(model.masker.w * cos_maps + model.masker.b)
    torch.testing.assert_close(out["tag_masks"], masks, atol=1e-5, rtol=1e-4)
    logits = tau * F.normalize(classes, dim=-1) @ g
    torch.testing.assert_close(out["class_logits"], logits, atol=1e-4, rtol=1e-4)
