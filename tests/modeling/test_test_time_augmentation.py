"""Multi-scale + flip averaging (pure function and in the sem-seg path), the softmax preset,
PAMR in the sem-seg path: each against a computation written here."""
import pytest
import torch
import torch.nn.functional as F

from conftest import build
from ttd_d2.modeling.pamr import PAMR
from ttd_d2.modeling.test_time_augmentation import multi_scale_flip, scale_passes, scaled_size

SLIDE = {"MODEL.SEG_INFERENCE.SLIDE_CROP": 32, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": 16}


@pytest.fixture
def dataset(register):
    return register(stuff_classes=["background", "circle", "square"], background_threshold=0.4)


def image(seed=0, h=64, w=48):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()


def test_multi_scale_flip_hand_values():
    img = torch.zeros(1, 3, 8, 6)
    height = lambda x: torch.full((len(x), 1, *x.shape[-2:]), float(x.shape[-2]))  # noqa: E731
    # scale 1 sees 8 rows, scale 0.5 sees 4: mean (8 + 4) / 2; with flip (8 + 8 + 4 + 4) / 4
    torch.testing.assert_close(multi_scale_flip(height, img, (1.0, 0.5)), torch.full((1, 8, 6), 6.0))
    torch.testing.assert_close(multi_scale_flip(height, img, (1.0, 0.5), flip=True), torch.full((1, 8, 6), 6.0))
    ramp = lambda x: torch.arange(x.shape[-1], dtype=torch.float).expand(len(x), 1, *x.shape[-2:])  # noqa: E731
    # a ramp 0..5 and its mirror 5..0 average to 2.5 everywhere
    torch.testing.assert_close(multi_scale_flip(ramp, img, (1.0,), flip=True), torch.full((1, 8, 6), 2.5))
    assert torch.equal(multi_scale_flip(ramp, img), ramp(img)[0])
    batches = []
    multi_scale_flip(lambda x: batches.append(len(x)) or ramp(x), img, (1.0, 0.5), flip=True)
    assert batches == [2, 2]  # an image and its flip share one call
    with pytest.raises(ValueError, match="SCALES"):
        multi_scale_flip(ramp, img, (1.0, 0.0))



def test_scaled_sizes_round_half_up_as_mmcv():
    """mmcv's rescale_size (the paper's mmseg protocol) rounds x.5 up, where Python's round()
    goes to the even neighbour: 597 x 0.5 = 298.5 -> 299, 7 x 1.5 = 10.5 -> 11."""
    assert scaled_size(448, 597, 0.5) == (224, 299)
    assert scaled_size(7, 5, 1.5) == (11, 8)
    assert scaled_size(448, 597, 1.5) == (672, 896) and scaled_size(448, 597, 2.0) == (896, 1194)
    assert scaled_size(10, 9, 0.33) == (3, 3) and scaled_size(10, 9, 0.7) == (7, 6)  # 3.3, 2.97; 7, 6.3
    assert scaled_size(1, 3, 0.1) == (1, 1)  # never empty
    passes = scale_passes(torch.zeros(1, 3, 7, 5), (1.0, 1.5), flip=True)
    assert [tuple(p.shape) for p in passes] == [(2, 3, 7, 5), (2, 3, 11, 8)]

def test_sem_seg_sliding_multi_scale_flip_is_the_mean_of_the_passes(tiny_cfg, dataset):
    single = build(tiny_cfg, **SLIDE)
    tta = build(tiny_cfg, **SLIDE, **{"MODEL.SEG_INFERENCE.SCALES": [1.0, 0.5], "MODEL.SEG_INFERENCE.FLIP": True})
    x = image()
    half = F.interpolate(x[None], size=(32, 24), mode="bilinear", align_corners=False)[0]

    def run(model, img):
        with torch.no_grad():
            return model([{"image": img, "dataset_name": dataset}])[0]["sem_seg"]

    up = lambda s: F.interpolate(s[None], size=(64, 48), mode="bilinear", align_corners=False)[0]  # noqa: E731
    passes = [run(single, x), run(single, x.flip(-1)).flip(-1), up(run(single, half)), up(run(single, half.flip(-1)).flip(-1))]
    expected = sum(passes) / 4
    got = run(tta, x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got[0], torch.full_like(got[0], 0.4))  # background channel stays the constant
    assert not torch.allclose(got, passes[0], atol=1e-4)


def test_softmax_preset_probabilities_and_threshold_background(tiny_cfg, dataset):
    model = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.CLASS_SCORES": "softmax", "MODEL.SEG_INFERENCE.LOGIT_SCALE": 40.0,
                               "MODEL.SEG_INFERENCE.PROB_THRESHOLD": 0.7})
    x = image(1, 32, 32)
    with torch.no_grad():
        got = model([{"image": x, "dataset_name": dataset}])[0]["sem_seg"]
        dense = model.backbone(model.normalize(x)[None], with_global=False)["dense"]  # [1, D, h, w]
        text = model.backbone.encode_text(["circle", "square"], use_templates=True)  # [2, D]
    cos = torch.einsum("dhw,kd->khw", F.normalize(dense[0], dim=0), F.normalize(text, dim=-1))
    cos = F.interpolate(cos[None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    probs = (40.0 * cos).softmax(dim=0)
    torch.testing.assert_close(got[1:], probs, atol=1e-5, rtol=1e-4)
    assert torch.equal(got[0], torch.full_like(got[0], 0.7))
    # background exactly where the largest class probability is below the threshold
    assert torch.equal(got.argmax(0) == 0, probs.max(0).values < 0.7)


def test_pamr_refines_the_class_scores_not_the_background(tiny_cfg, dataset):
    plain = build(tiny_cfg)
    refined = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.PAMR.NUM_ITER": 2, "MODEL.SEG_INFERENCE.PAMR.DILATIONS": [1, 2]})
    x = image(2, 32, 32)
    with torch.no_grad():
        base = plain([{"image": x, "dataset_name": dataset}])[0]["sem_seg"]
        got = refined([{"image": x, "dataset_name": dataset}])[0]["sem_seg"]
    expected = PAMR(2, (1, 2))(plain.normalize(x)[None], base[None, 1:])[0]
    torch.testing.assert_close(got[1:], expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got[0], torch.full_like(got[0], 0.4))


def test_caption_masks_follow_the_protocol(tiny_cfg):
    """Caption masks take the same windows, scales, flips and PAMR as the class scores (the TTD
    authors' caption evaluation): the mean of the single-pass masks, PAMR-refined; one whole-image
    pass is the plain masker of the caption's cosine map."""
    single = build(tiny_cfg, **SLIDE)
    tta = build(tiny_cfg, **SLIDE, **{"MODEL.SEG_INFERENCE.SCALES": [1.0, 0.5], "MODEL.SEG_INFERENCE.FLIP": True,
                                      "MODEL.SEG_INFERENCE.PAMR.NUM_ITER": 2, "MODEL.SEG_INFERENCE.PAMR.DILATIONS": [1, 2]})
    caption = "a circle near a square"
    x = single.normalize(image(3))[None]  # [1, 3, 64, 48]
    half = F.interpolate(x, size=(32, 24), mode="bilinear", align_corners=False)

    def mask(model, img):
        with torch.no_grad():
            return model.analyse_caption(img, caption, tuple(img.shape[-2:]))["caption_mask"]

    up = lambda m: F.interpolate(m[None, None], size=(64, 48), mode="bilinear", align_corners=False)[0, 0]  # noqa: E731
    passes = [mask(single, x), mask(single, x.flip(-1)).flip(-1), up(mask(single, half)), up(mask(single, half.flip(-1)).flip(-1))]
    expected = PAMR(2, (1, 2))(x, (sum(passes) / 4)[None, None])[0, 0].clamp(0, 1)
    with torch.no_grad():
        got = tta.analyse_caption(x, caption, (64, 48))["caption_mask"]
        small = tta.analyse_caption(x, caption, (32, 24))["caption_mask"]  # at another output size: resized
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(small, F.interpolate(expected[None, None], size=(32, 24), mode="bilinear",
                                                    align_corners=False)[0, 0], atol=1e-5, rtol=1e-4)
    plain = build(tiny_cfg)
    with torch.no_grad():
        out = plain.analyse_caption(x, caption, (64, 48))
    assert torch.equal(out["caption_mask"], plain.masker(out["caption_cos"]).clamp(0, 1))


def test_window_batch_changes_speed_not_results(tiny_cfg, dataset):
    """Windows one per forward, in batches of 3, or all of a scale at once: the same scores."""
    x = image(4)
    protocol = {**SLIDE, "MODEL.SEG_INFERENCE.SCALES": [1.0, 1.5], "MODEL.SEG_INFERENCE.FLIP": True}
    with torch.no_grad():
        outs = [build(tiny_cfg, **protocol, **{"MODEL.SEG_INFERENCE.WINDOW_BATCH": n})([{"image": x, "dataset_name": dataset}])[0]["sem_seg"]
                for n in (1, 3, 0)]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-5, rtol=1e-4)
