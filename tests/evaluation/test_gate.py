"""The gate's pure functions (ttd_d2/evaluation/gate.py) against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from ttd_d2.evaluation.caption_seg import caption_image_statistics
from ttd_d2.evaluation.gate import (
    auc, gate_verdict, names_background, object_aucs, summarize_gate, tag_selections, target_counts, target_union,
    two_class_iou,
)


def test_auc_counts_ties_half():
    # pairs (inside, outside): 3>1, 3>2, 1=1 (half), 1<2 -> 2.5 / 4
    assert auc([3.0, 1.0], [1.0, 2.0]) == pytest.approx(0.625)
    assert auc([5.0], [1.0, 2.0]) == 1.0 and auc([0.0], [1.0]) == 0.0
    assert math.isnan(auc([], [1.0]))


def test_object_aucs_per_named_object():
    instances = np.array([[1, 1, 0], [2, 0, 0]])
    maps = np.array([[[0.9, 0.8, 0.1], [0.8, 0.2, 0.3]],    # circle
                     [[0.5, 0.5, 0.5], [0.1, 0.4, 0.6]]])   # star
    objects = [{"category": "circle", "dominant": True}, {"category": "star", "dominant": False},
               {"category": "moon", "dominant": False}]  # moon: not a candidate, and empty
    result = object_aucs(maps, ["circle", "star"], instances, objects)
    # circle: inside {.9, .8} vs outside {.1, .8, .2, .3}: (4 + 3.5) / 8; star: inside {.1} vs 5 larger
    assert result == [(True, pytest.approx(7.5 / 8)), (False, 0.0)]


def test_names_background():
    assert names_background("a photo of a star on a striped background")
    assert names_background("a moon, blurry")  # a texture word alone
    assert not names_background("stock image of a ring and a star for your design")


def test_tag_selections():
    tags = ["photo", "circle", "striped", "background", "star"]
    got = tag_selections(tags, torch.tensor([True, True, True, True, False]), gt_tags=["circle", "star"])
    assert {k: v.tolist() for k, v in got.items()} == {
        "s_pixel": [True, True, True, True, False],
        "s_pixel_no_background": [True, True, False, False, False],
        "object_words": [False, True, False, False, False],
        "gt_tags": [False, True, False, False, True],
    }
    with pytest.raises(ValueError, match="2 tags vs 1"):
        tag_selections(["a", "b"], [True], [])


def test_target_union_minmax_raw_and_empty():
    masks = torch.tensor([[[0.0, 0.3], [0.6, 0.9]], [[0.5, 0.5], [0.5, 0.5]]])
    minmax = target_union(masks, [True, True], "minmax")  # the constant map normalises to 0
    assert torch.allclose(minmax, torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    assert torch.allclose(target_union(masks, [True, True], "none"), torch.tensor([[0.5, 0.5], [0.6, 0.9]]))
    assert torch.equal(target_union(masks, [False, False]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="normalization"):
        target_union(masks, [True, True], "softmax")


def test_target_counts_and_two_class_iou():
    masks = torch.tensor([[[0.0, 0.3], [0.6, 0.9]]])
    gt = np.array([[False, True], [True, False]])
    counts = target_counts(masks, {"s_pixel": np.array([True])}, gt, to_image=lambda m: m)
    # minmax [[0, 1/3], [2/3, 1]] >= 0.5 -> [[F, F], [T, T]]; raw the same
    assert counts == {"s_pixel/minmax": (1, 1, 1, 1), "s_pixel/none": (1, 1, 1, 1)}
    # caption IoU 2 / 4, background IoU 4 / 6
    assert two_class_iou((2, 1, 1, 4)) == pytest.approx(100 * (0.5 + 2 / 3) / 2)


def test_gate_verdict_margins():
    at_the_bound = gate_verdict(60.0, 55.0, 70.0, 50.0)
    assert at_the_bound["verdict"] == "PASS" and at_the_bound["iou_margin"] == 0 and at_the_bound["bias_margin"] == 0
    weak_target = gate_verdict(40.0, 55.0, 80.0, 40.0)
    assert weak_target["verdict"] == "FAIL"
    assert weak_target["target_minus_caption_iou"] == -15.0 and weak_target["iou_margin"] == -20.0
    assert weak_target["dominant_minus_secondary"] == 40.0 and weak_target["bias_margin"] == 20.0
    assert gate_verdict(70.0, 55.0, 60.0, 45.0)["verdict"] == "FAIL"  # bias 15 < 20
    assert gate_verdict(float("nan"), 55.0, 80.0, 40.0)["verdict"] == "FAIL"


def test_summarize_gate_sums_counts_and_splits_background_captions():
    instances = np.array([[1, 2], [0, 0]])
    objects = [{"category": "circle", "dominant": True}, {"category": "star", "dominant": False}]
    caption_mask = np.array([[True, False], [False, False]])  # covers the dominant, not the secondary
    stats = caption_image_statistics(caption_mask, instances > 0, instances, objects)
    zero = (0, 0, 0, 0)
    def image(s_pixel_counts, background, aucs):
        targets = {f"{sel}/{norm}": zero for sel in ("s_pixel_no_background", "object_words", "gt_tags")
                   for norm in ("minmax", "none")}
        targets.update({"s_pixel/minmax": s_pixel_counts, "s_pixel/none": zero})
        return {"targets": targets, "names_background": background, "caption": stats, "aucs": aucs}

    report = summarize_gate([image((2, 0, 0, 2), True, [(True, 1.0)]),
                             image((0, 2, 2, 0), False, [(True, 0.5), (False, 0.2)])])
    # summed (2, 2, 2, 2): caption IoU 2 / 6, background IoU 2 / 6
    assert report["target_iou"]["s_pixel"]["minmax"] == pytest.approx(100 / 3)
    assert report["target_iou_s_pixel_minmax"] == {"names_background": 100.0, "others": 0.0}
    assert report["caption_mask"]["coverage_dominant"] == 100.0 and report["caption_mask"]["coverage_secondary"] == 0.0
    assert report["mask_bias"] == 100.0
    assert report["tag_map_auc"] == {"dominant": 0.75, "secondary": 0.2}
    # caption mask: per image tp 1, fn 1, tn 2 -> IoU (1/2 + 2/3) / 2; target 33.3 < it + 5
    assert report["caption_mask"]["CaptionIoU"] == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert report["gate"]["verdict"] == "FAIL" and report["num_captions"] == 2


def test_summarize_gate_reports_the_targets_coverage_when_given():
    """The target's coverage of dominant and secondary objects (does it cover what the caption
    mask misses?), from the same per-image statistics as the caption mask's."""
    instances = np.array([[1, 2], [0, 0]])
    objects = [{"category": "circle", "dominant": True}, {"category": "star", "dominant": False}]
    caption = caption_image_statistics(np.array([[True, False], [False, False]]), instances > 0, instances, objects)
    target = caption_image_statistics(np.array([[True, True], [False, False]]), instances > 0, instances, objects)
    zero = (0, 0, 0, 0)
    targets = {f"{sel}/{norm}": zero for sel in ("s_pixel", "s_pixel_no_background", "object_words", "gt_tags")
               for norm in ("minmax", "none")}
    one = {"targets": targets, "names_background": False, "caption": caption, "aucs": []}
    assert "target_mask" not in summarize_gate([one])
    report = summarize_gate([{**one, "target": target}])
    assert report["caption_mask"]["coverage_secondary"] == 0.0
    assert report["target_mask"]["coverage_secondary"] == 100.0 and report["target_mask"]["CaptionIoU"] == 100.0
    assert "target_mask_gt_tags" not in report
    report = summarize_gate([{**one, "target": target, "target_gt_tags": caption}])  # the ground-truth tags' target
    assert report["target_mask_gt_tags"]["coverage_secondary"] == 0.0 and report["target_mask"]["coverage_secondary"] == 100.0
