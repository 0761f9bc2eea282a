"""Inference at any image size: the normalised image is padded to the patch grid and the maps
are cropped back (``pad_to_patch_grid``, ``maps_to_image``). Each check redoes the computation
by hand on the explicitly padded image (tiny CLIP, patch 8), for CLIPDense and for TCL, whose
dense maps are at 4x the patch grid."""
import pytest
import torch
import torch.nn.functional as F

from conftest import build as build_base
from ttd_d2.modeling.meta_arch.segmentation import max_over_synonyms, slide_inference
from ttd_d2.modeling.ttd.scoring import cosine_maps, pixel_tag_scores

CLASSES = ["circle, round", "square", "triangle"]


def build(cfg, **opts):
    """``conftest.build`` (eval mode); for TCL the decoder's gates are opened, so that its dense
    maps are not a nearest upsampling of the MaskCLIP path any more."""
    model = build_base(cfg, **opts)
    if cfg.MODEL.BACKBONE.NAME == "TCL":
        with torch.no_grad():
            for name, p in model.backbone.head.decoder.named_parameters():
                if name.endswith("gate"):
                    p.fill_(0.5)
                else:
                    p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(params=["CLIPDense", "TCL"])
def backbone_cfg(request, tiny_cfg):
    tiny_cfg.MODEL.BACKBONE.NAME = request.param
    return tiny_cfg


def image(h, w, seed=0):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def bilinear(maps, size):
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]


@pytest.fixture
def dataset(register):
    return register(stuff_classes=CLASSES)


def class_scores_by_hand(model, dataset, normalised):
    """[C, H, W] of a normalised [1, 3, H, W] image: zero-pad right/bottom to multiples of 8,
    cosines on the padded grid, bilinear to the padded size, crop, masker, max over synonyms."""
    h, w = normalised.shape[-2:]
    padded = F.pad(normalised, (0, -w % 8, 0, -h % 8))
    text_emb, owner, num_classes, _ = model.class_embeddings(dataset)
    cos = cosine_maps(model.backbone(padded, with_global=False)["dense"], text_emb[None])[0]
    cos = bilinear(cos, padded.shape[-2:])[:, :h, :w]
    return max_over_synonyms(model.masker(cos), owner, num_classes)


@pytest.mark.parametrize("h, w", [(40, 53), (37, 50)])
def test_sem_seg_equals_padded_and_cropped_by_hand(backbone_cfg, dataset, h, w):
    model = build(backbone_cfg)
    x = image(h, w)
    with torch.no_grad():
        out = model([{"image": x, "height": 2 * h, "width": 2 * w, "dataset_name": dataset}])[0]["sem_seg"]
        expected = bilinear(class_scores_by_hand(model, dataset, model.normalize(x)[None]), (2 * h, 2 * w))
    assert out.shape == (len(CLASSES), 2 * h, 2 * w)
    assert torch.allclose(out, expected, atol=1e-6)


def test_pad_value_is_the_pixel_mean_colour(backbone_cfg):
    """Zero padding after normalisation = padding the raw image with the mean colour."""
    model = build(backbone_cfg)
    x = image(40, 53).float()
    mean_padded = torch.cat([x, model.pixel_mean.expand(3, 40, 3)], dim=-1)
    assert torch.allclose(model.normalize(mean_padded), F.pad(model.normalize(x), (0, 3)), atol=1e-5)


def test_sliding_windows_and_flip_pad_each_pass(backbone_cfg, dataset):
    """20 x 20 windows (not multiples of 8) and the flipped pass, whose padding lies on the
    original's left: every pass is padded and cropped on its own."""
    model = build(backbone_cfg, **{"MODEL.SEG_INFERENCE.SLIDE_CROP": 20, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": 12,
                               "MODEL.SEG_INFERENCE.FLIP": True})
    x = image(30, 45, seed=1)
    with torch.no_grad():
        out = model([{"image": x, "dataset_name": dataset}])[0]["sem_seg"]
        normalised = model.normalize(x)[None]

        def by_hand(windows):  # one window at a time, each padded on its own
            return torch.stack([class_scores_by_hand(model, dataset, w[None]) for w in windows])

        plain = slide_inference(by_hand, normalised, 20, 12)[0]
        flipped = slide_inference(by_hand, normalised.flip(-1), 20, 12)[0].flip(-1)
    assert torch.allclose(out, 0.5 * (plain + flipped), atol=1e-6)


def test_caption_analysis_and_score_tags_at_any_size(backbone_cfg):
    model = build(backbone_cfg)
    x, caption = image(40, 53, seed=2), "a red circle near a blue square"
    with torch.no_grad():
        out = model([{"image": x, "height": 60, "width": 80, "caption": caption}])[0]
        padded = F.pad(model.normalize(x)[None], (0, 3))
        feats = model.backbone(padded)
        caption_emb = model.backbone.encode_text([caption])
        tag_emb = model.backbone.encode_text(out["tags"], use_templates=True)[None]
        cos = cosine_maps(feats["dense"], caption_emb[None])[0]
        cos = bilinear(bilinear(cos, (40, 56))[:, :40, :53], (60, 80))[0]
        tag_cos = cosine_maps(feats["dense"], tag_emb)
    assert torch.allclose(out["caption_cos"], cos, atol=1e-6)
    assert torch.allclose(out["caption_mask"], model.masker(cos).clamp(0, 1), atol=1e-6)
    scale = model.backbone.dense_scale  # the padded image's patch grid, 4x finer for TCL
    assert out["tag_masks"].shape == (len(out["tags"]), 5 * scale, 7 * scale)
    assert torch.allclose(out["tag_masks"], model.masker(tag_cos[0]), atol=1e-6)
    valid = torch.ones(1, len(out["tags"]), dtype=torch.bool)
    s_pixel = pixel_tag_scores(tag_cos, valid, model.backbone.logit_scale)[0]
    assert torch.allclose(out["tag_scores"]["s_pixel"], s_pixel, atol=1e-6)
    rgb = x.permute(1, 2, 0).numpy().copy()
    assert [s for _, s in model.score_tags(rgb, caption)] == pytest.approx(s_pixel.tolist(), abs=1e-6)


def test_images_on_the_patch_grid_are_unchanged_bit_for_bit(backbone_cfg, dataset):
    """32 x 48: no padding, one resize straight to the output size, as before."""
    model = build(backbone_cfg)
    x = image(32, 48, seed=3)
    with torch.no_grad():
        sem = model([{"image": x, "height": 64, "width": 80, "dataset_name": dataset}])[0]["sem_seg"]
        cap = model([{"image": x, "height": 64, "width": 80, "caption": "a red circle"}])[0]
        normalised = model.normalize(x)[None]
        text_emb, owner, num_classes, _ = model.class_embeddings(dataset)
        feats = model.backbone(normalised)
        cos = cosine_maps(model.backbone(normalised, with_global=False)["dense"], text_emb[None])[0]
        scores = max_over_synonyms(model.masker(bilinear(cos, (32, 48))), owner, num_classes)
        caption_cos = cosine_maps(feats["dense"], model.backbone.encode_text(["a red circle"])[None])[0]
        caption_mask = model.masker(bilinear(caption_cos, (64, 80))[0]).clamp(0, 1)
    assert torch.equal(sem, bilinear(scores, (64, 80)))
    assert torch.equal(cap["caption_cos"], bilinear(caption_cos, (64, 80))[0])
    assert torch.equal(cap["caption_mask"], caption_mask)


def test_class_owner_is_cached_beside_the_embeddings(tiny_cfg, dataset):
    """The synonym -> class index lives with the embeddings, so no pass of the test-time
    protocol copies it to the device again (a blocking copy per pass on a GPU)."""
    model = build(tiny_cfg)
    text_emb, owner, num_classes, _ = model.class_embeddings(dataset)
    assert owner.tolist() == [0, 0, 1, 2] and num_classes == 3
    assert owner.device == text_emb.device
    assert model.class_embeddings(dataset)[1] is owner  # cached, not rebuilt per call
