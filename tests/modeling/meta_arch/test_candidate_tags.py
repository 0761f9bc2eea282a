"""Candidate tags of the TTD meta-architecture: the same text window and MODEL.TTD.MAX_TAGS in
training (``_tag_batch``), caption inference (``analyse_caption``, ``score_tags``) and the
caption evaluators. The tiny test CLIP's context is 16 tokens (SOT + 14 + EOT)."""
import numpy as np
import pytest
import torch

from conftest import build
from ttd_d2.evaluation import TagSelectionEvaluator, TextBiasEvaluator
from ttd_d2.modeling.ttd.tags import caption_to_tags

# 14 one-token words (exactly the window), then 3 more: "dog", "on" and "lawn" are never seen
FULL = "a red circle near a blue square and a green triangle on the grass"
LONG = FULL + " dog on lawn"
SEEN = ["red", "circle", "near", "blue", "square", "green", "triangle", "grass"]


def image(seed=0, h=32, w=32):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_training_tags_stop_at_the_caption_window(tiny_cfg):
    model = build(tiny_cfg, train=True, **{"MODEL.TTD.ENABLED": True})
    assert model.backbone.clip.context_length == 16
    assert caption_to_tags(LONG) == SEEN + ["dog", "lawn"]
    batch = model._tag_batch([LONG, "a dog"])
    assert batch["tags"] == [SEEN, ["dog"]]
    assert batch["unique"] == SEEN + ["dog"]
    assert batch["valid"].sum(1).tolist() == [8, 1]
    losses = model([{"image": image(i), "caption": c} for i, c in enumerate([LONG, "a dog"])])
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(model.tag_statistics["candidates_per_caption"]) == pytest.approx((8 + 1) / 2)


def test_max_tags_caps_training_and_inference_alike(tiny_cfg):
    model = build(tiny_cfg, train=True, **{"MODEL.TTD.ENABLED": True, "MODEL.TTD.MAX_TAGS": 3})
    assert model._tag_batch([LONG, "a dog"])["tags"] == [SEEN[:3], ["dog"]]
    model.eval()
    with torch.no_grad():
        out = model([{"image": image(), "caption": LONG}])[0]
    assert out["tags"] == SEEN[:3]
    assert out["tag_masks"].shape[0] == 3


@pytest.mark.parametrize("max_tags", [0, -2])
def test_max_tags_below_one_is_rejected(tiny_cfg, max_tags):
    with pytest.raises(ValueError, match="MODEL.TTD.MAX_TAGS"):
        build(tiny_cfg, **{"MODEL.TTD.MAX_TAGS": max_tags})


def test_inference_and_score_tags_use_the_window(tiny_cfg):
    model = build(tiny_cfg)
    with torch.no_grad():
        out = model([{"image": image(1), "caption": LONG}])[0]
    assert out["tags"] == SEEN
    assert all(v.shape == (len(SEEN),) for v in out["tag_scores"].values())
    assert out["tag_caption_cos"].shape == (len(SEEN),) and out["tag_masks"].shape[0] == len(SEEN)
    rgb = image(1).permute(1, 2, 0).numpy().copy()
    assert [t for t, _ in model.score_tags(rgb, LONG)] == SEEN
    # the softmax scores are over the window's tags: the same as for the caption cut there
    with torch.no_grad():
        cut = model([{"image": image(1), "caption": FULL}])[0]
    assert cut["tags"] == SEEN
    assert torch.allclose(out["tag_scores"]["s_pixel"], cut["tag_scores"]["s_pixel"])


def test_caption_evaluators_count_words_past_the_window_as_not_candidates(tiny_cfg):
    model = build(tiny_cfg)
    record = {
        "image": image(2), "caption": LONG, "tags": ["circle", "square", "dog"],
        "objects": [{"category": "circle", "dominant": True}, {"category": "dog", "dominant": False}],
    }
    with torch.no_grad():
        outputs = model([record])
    tag_eval = TagSelectionEvaluator("unused", distributed=False)
    tag_eval.process([record], outputs)
    assert tag_eval._per_caption[0]["_gt_not_candidate"] == 1  # "dog" is past the window
    assert np.isfinite(tag_eval.evaluate()["tag_selection/s_pixel"]["F1"])
    bias = TextBiasEvaluator("unused", distributed=False)
    bias.process([record], outputs)
    result = bias.evaluate()["text_bias"]
    assert result["num_dominant"] == 1 and result["skipped_secondary"] == 1
