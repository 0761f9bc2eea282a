"""Scores exactly at a threshold are selected (``>=``, as documented) by the caption
segmentation evaluator (MASK_THRESHOLD) and the tag selection evaluator (tag_threshold), with
hand-counted results. The values are exact in float32, so "at the threshold" is a real tie."""
import numpy as np
import pytest
import torch
from PIL import Image

from ttd_d2.evaluation import CaptionSegEvaluator, TagSelectionEvaluator


@pytest.mark.parametrize("threshold", [0.5, 0.25])
def test_caption_mask_at_the_threshold_is_caption(tmp_path, threshold):
    path = tmp_path / "caption.png"
    Image.fromarray(np.array([[1, 0], [0, 1]], dtype=np.uint8)).save(path)
    mask = torch.tensor([[threshold, threshold - 0.125], [0.75, threshold]])  # predicted: [[1, 0], [1, 1]]
    record = {"file_name": "a.jpg", "height": 2, "width": 2, "caption_mask_file": str(path)}
    evaluator = CaptionSegEvaluator("test_threshold_ties", mask_threshold=threshold, distributed=False)
    evaluator.reset()
    evaluator.process([record], [{"caption_mask": mask}])
    res = evaluator.evaluate()["caption_seg"]
    # caption: TP 2, FP 1, FN 0 -> 2/3; background: TP 1 (the TN), FP 0, FN 1 -> 1/2
    assert res["IoU-caption"] == pytest.approx(100 * 2 / 3)
    assert res["IoU-background"] == pytest.approx(100 / 2)
    assert res["CaptionIoU"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert res["mFPR"] == pytest.approx((1 / 3 + 0) / 2) and res["mFNR"] == pytest.approx((0 + 1 / 2) / 2)


@pytest.mark.parametrize("threshold", [0.5, 0.25])
def test_tag_score_at_the_threshold_is_selected(threshold):
    tags = ["dog", "cat", "sky", "grass"]
    scores = torch.tensor([threshold, threshold, threshold - 0.125, 0.875])  # selected: dog, cat, grass
    output = {"tags": tags, "tag_scores": {"s_pixel": scores}, "tag_threshold": threshold}
    evaluator = TagSelectionEvaluator("test_threshold_ties", methods=("s_pixel",), distributed=False)
    evaluator.reset()
    evaluator.process([{"tags": ["dog", "sky", "grass"]}], [output])
    res = evaluator.evaluate()["tag_selection/s_pixel"]
    # TP dog, grass; FP cat; FN sky; TN none: P 2/3, R 2/3, Acc 2/4
    assert res["P"] == pytest.approx(100 * 2 / 3) and res["R"] == pytest.approx(100 * 2 / 3)
    assert res["F1"] == pytest.approx(100 * 2 / 3) and res["Acc"] == pytest.approx(50.0)
