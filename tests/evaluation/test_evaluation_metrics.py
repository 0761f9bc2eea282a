"""Metric functions against independent brute-force computations."""
import math

import numpy as np
import pytest
import torch

from ttd_d2.evaluation.metrics import (
    average_precision,
    binary_confusion,
    cosine_at_word,
    coverage_percent,
    foreground_iou,
    mean_average_precision,
    object_overlaps,
    precision_recall_f1_accuracy,
    tag_relevance,
    top1_correct,
    two_class_segmentation_rates,
)


# ----------------------------------------------------------------- reference implementations
def loop_confusion(pred, gt):
    tp = fp = fn = tn = 0
    for p, g in zip(np.ravel(pred), np.ravel(gt)):
        if p and g:
            tp += 1
        elif p and not g:
            fp += 1
        elif not p and g:
            fn += 1
        else:
            tn += 1
    return tp, fp, fn, tn


def step_ap(scores, relevant):
    """AP as the area under the step precision-recall curve with one threshold per
    distinct score (sum over thresholds of recall increase * precision)."""
    n_relevant = sum(relevant)
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [r for s, r in zip(scores, relevant) if s >= threshold]
        recall = sum(chosen) / n_relevant
        ap += (recall - previous_recall) * (sum(chosen) / len(chosen))
        previous_recall = recall
    return ap


def ranked_ap(scores, relevant):
    """Textbook AP on a strict ranking (no ties): mean precision@rank of relevant items."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


# --------------------------------------------------------------------------------- tests
def test_binary_confusion_matches_loops():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred, gt = rng.random((5, 7)) > 0.5, rng.random((5, 7)) > 0.3
        assert binary_confusion(pred, gt) == loop_confusion(pred, gt)
    assert binary_confusion(torch.zeros(3, 3), torch.zeros(3, 3)) == (0, 0, 0, 9)
    with pytest.raises(ValueError, match="shape"):
        binary_confusion(np.zeros((2, 3)), np.zeros((3, 2)))


def test_precision_recall_f1_accuracy_by_hand():
    res = precision_recall_f1_accuracy(tp=3, fp=1, fn=2, tn=4)
    assert res["P"] == pytest.approx(75.0)
    assert res["R"] == pytest.approx(60.0)
    assert res["F1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35 * 100)
    assert res["Acc"] == pytest.approx(70.0)


def test_empty_selection_and_no_relevant_give_zero_not_nan():
    res = precision_recall_f1_accuracy(tp=0, fp=0, fn=4, tn=6)  # nothing selected
    assert res == {"P": 0.0, "R": 0.0, "F1": 0.0, "Acc": 60.0}
    res = precision_recall_f1_accuracy(tp=0, fp=0, fn=0, tn=0)  # no candidates at all
    assert all(v == 0.0 for v in res.values())


def test_average_precision_matches_step_curve_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(1, 9))
        scores = list(np.round(rng.random(k), 1))  # rounding makes ties frequent
        relevant = list(rng.random(k) > 0.5)
        ours = average_precision(scores, relevant)
        if not any(relevant):
            assert ours is None
        else:
            assert ours == pytest.approx(step_ap(scores, relevant))


def test_average_precision_matches_ranked_definition_without_ties():
    rng = np.random.default_rng(2)
    for _ in range(100):
        k = int(rng.integers(2, 9))
        scores = list(rng.permutation(k) / k)
        relevant = [True] + list(rng.random(k - 1) > 0.5)
        assert average_precision(scores, relevant) == pytest.approx(ranked_ap(scores, relevant))


def test_average_precision_is_order_invariant_for_binary_scores():
    scores, relevant = [1, 0, 1, 0, 1], [True, True, False, False, True]
    # threshold 1 -> 2 relevant of 3 retrieved; threshold 0 -> 3 of 5
    expected = (2 / 3 + 2 / 3 + 3 / 5) / 3
    assert average_precision(scores, relevant) == pytest.approx(expected)
    perm = [4, 2, 0, 3, 1]
    permuted = average_precision([scores[i] for i in perm], [relevant[i] for i in perm])
    assert permuted == pytest.approx(expected)


def test_mean_average_precision_skips_undefined():
    assert mean_average_precision([0.5, None, 1.0]) == pytest.approx(75.0)
    assert math.isnan(mean_average_precision([None, None]))


def test_tag_relevance_unknown_words_and_case():
    rel = tag_relevance(["Dog", "frisbee", "zxqv", "the"], ["dog", "frisbee", "grass"])
    assert rel.tolist() == [True, True, False, False]
    assert tag_relevance([], ["dog"]).shape == (0,)


def loop_two_class(pred, gt):
    """Per-class (IoU, FPR, FNR) for labels {0: background, 1: caption} by loops."""
    out = {}
    for c in (0, 1):
        tp = fp = fn = 0
        for p, g in zip(np.ravel(pred), np.ravel(gt)):
            tp += (p == c) and (g == c)
            fp += (p == c) and (g != c)
            fn += (p != c) and (g == c)
        union = tp + fp + fn
        out[c] = (tp / union, fp / union, fn / union) if union else None
    return out


def test_two_class_rates_match_loops_and_sum_to_one():
    rng = np.random.default_rng(3)
    for _ in range(20):
        pred, gt = rng.random((6, 5)) > 0.5, rng.random((6, 5)) > 0.6
        rates = two_class_segmentation_rates(*binary_confusion(pred, gt))
        ref = loop_two_class(pred.astype(int), gt.astype(int))
        for c in (0, 1):
            assert (rates["IoU"][c], rates["FPR"][c], rates["FNR"][c]) == pytest.approx(ref[c])
            assert rates["IoU"][c] + rates["FPR"][c] + rates["FNR"][c] == pytest.approx(1.0)
        assert rates["CaptionIoU"] == pytest.approx(50 * (ref[0][0] + ref[1][0]))
        assert rates["mFPR"] == pytest.approx((ref[0][1] + ref[1][1]) / 2)
        assert rates["mFNR"] == pytest.approx((ref[0][2] + ref[1][2]) / 2)


def test_all_zero_masks_have_finite_means():
    zeros = np.zeros((4, 4), bool)
    rates = two_class_segmentation_rates(*binary_confusion(zeros, zeros))
    assert rates["CaptionIoU"] == 100.0 and rates["mFPR"] == 0.0 and rates["mFNR"] == 0.0
    assert math.isnan(rates["IoU"][1])  # caption class absent from both: left out of means
    assert foreground_iou(0, 0, 0) == 1.0

    gt = zeros.copy()
    gt[:2] = True  # empty prediction, non-empty GT
    rates = two_class_segmentation_rates(*binary_confusion(zeros, gt))
    assert rates["IoU"][1] == 0.0 and rates["FNR"][1] == 1.0
    assert rates["IoU"][0] == pytest.approx(0.5) and rates["FPR"][0] == pytest.approx(0.5)
    assert math.isnan(two_class_segmentation_rates(0, 0, 0, 0)["CaptionIoU"])


def test_object_overlaps_and_coverage_by_loops():
    rng = np.random.default_rng(4)
    instance = rng.integers(0, 4, size=(6, 7))
    instance[0, 0] = 9  # id beyond the object list is ignored
    pred = rng.random((6, 7)) > 0.5
    ours = object_overlaps(pred, instance, num_objects=4)  # object 4 has no pixels
    for i in range(1, 5):
        inter = sum(1 for p, v in zip(pred.ravel(), instance.ravel()) if p and v == i)
        area = sum(1 for v in instance.ravel() if v == i)
        assert ours[i - 1] == (inter, area)
    assert ours[3] == (0, 0)
    expected = 100 * np.mean([i / a for i, a in ours if a > 0])
    assert coverage_percent(ours) == pytest.approx(expected)
    assert math.isnan(coverage_percent([(0, 0)]))


def test_cosine_at_word_and_unknown_word():
    tags, cos = ["dog", "frisbee", "dog"], torch.tensor([0.3, 0.1, 0.5])
    assert cosine_at_word(tags, cos, "Dog") == pytest.approx(0.4)
    assert cosine_at_word(tags, cos, "frisbee") == pytest.approx(0.1)
    assert cosine_at_word(tags, cos, "traffic light") is None
    with pytest.raises(ValueError):
        cosine_at_word(tags, cos[:2], "dog")


def test_top1_correct():
    assert top1_correct(torch.tensor([0.1, 2.0, 0.3]), 1)
    assert not top1_correct(np.array([0.1, 2.0, 0.3]), 2)
