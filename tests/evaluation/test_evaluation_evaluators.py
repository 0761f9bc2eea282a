"""Evaluators end to end on three fake caption records with tiny PNG masks."""
import logging
import math

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation.testing import flatten_results_dict
from PIL import Image

from ttd_d2.evaluation import (
    CaptionSegEvaluator,
    TagSelectionEvaluator,
    TextBiasEvaluator,
    ZeroShotEvaluator,
    build_caption_evaluators,
)

DATASET = "test_evaluation_fake_captions"
THING_CLASSES = ["dog", "frisbee", "cat", "bird"]
H, W = 4, 5
METHODS = ("s_image", "s_text", "s_pixel", "image_text", "nltk")


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def register_metadata():
    if DATASET not in MetadataCatalog.list():
        MetadataCatalog.get(DATASET).set(thing_classes=THING_CLASSES, evaluator_type="caption")


@pytest.fixture
def fake(tmp_path):
    """(records, outputs): 3 captions; record 0 has 2 objects, records 1-2 one each."""
    rng = np.random.default_rng(0)
    objects = [
        [{"category": "dog", "category_id": 0, "dominant": True},
         {"category": "frisbee", "category_id": 1, "dominant": False}],
        [{"category": "cat", "category_id": 2, "dominant": True}],
        [{"category": "bird", "category_id": 3, "dominant": True}],
    ]
    gt_tags = [["dog", "frisbee", "grass"], ["cat"], ["bird"]]
    records, outputs = [], []
    for i in range(3):
        instance = rng.integers(0, len(objects[i]) + 1, size=(H, W))
        caption = (instance > 0) | (rng.random((H, W)) > 0.8)
        records.append({
            "file_name": f"img{i}.jpg", "image_id": i, "height": H, "width": W,
            "dataset_name": DATASET, "caption": " ".join(gt_tags[i]), "tags": gt_tags[i],
            "caption_mask_file": write_png(tmp_path / f"cap{i}.png", caption),
            "instance_mask_file": write_png(tmp_path / f"inst{i}.png", instance),
            "objects": objects[i], "image": torch.zeros(3, H, W),
        })
    candidates = [["dog", "catches", "frisbee", "grass"], ["cat", "sofa"], ["sky", "blue"]]
    s_pixel = [[1.0, 0.6, 0.8, 0.4], [0.9, 0.7], [0.3, 0.1]]
    nltk = [[1.0, 0.0, 1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
    cos = [[0.9, 0.1, 0.3, 0.2], [0.8, 0.4], [0.5, 0.6]]
    logits = [[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0], [5.0, 0.0, 0.0, 1.0]]
    for i in range(3):
        k = len(candidates[i])
        scores = {m: torch.tensor(rng.random(k), dtype=torch.float32) for m in METHODS}
        scores["s_pixel"] = torch.tensor(s_pixel[i])
        scores["nltk"] = torch.tensor(nltk[i])
        outputs.append({
            "caption_mask": torch.tensor(rng.random((H, W)), dtype=torch.float32),
            "tags": candidates[i], "tag_scores": scores, "tag_threshold": 0.5,
            "tag_caption_cos": torch.tensor(cos[i]), "class_logits": torch.tensor(logits[i]),
        })
    return records, outputs


def run(evaluator, records, outputs):
    """reset, process in two calls (2 + 1 records), evaluate."""
    evaluator.reset()
    evaluator.process(records[:2], outputs[:2])
    evaluator.process(records[2:], outputs[2:])
    return evaluator.evaluate()


def brute_force_tag_metrics(records, outputs, method):
    tp = fp = fn = tn = 0
    aps = []
    for rec, out in zip(records, outputs):
        scores = out["tag_scores"][method].tolist()
        thr = 0.5 if method == "nltk" else out["tag_threshold"]
        rel = [t in rec["tags"] for t in out["tags"]]
        for s, r in zip(scores, rel):
            tp += s >= thr and r
            fp += s >= thr and not r
            fn += s < thr and r
            tn += s < thr and not r
        if any(rel):  # AP: precision at each relevant item's score threshold
            precisions = []
            for s_k, r_k in zip(scores, rel):
                if r_k:
                    above = [r for s, r in zip(scores, rel) if s >= s_k]
                    precisions.append(sum(above) / len(above))
            aps.append(sum(precisions) / len(precisions))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"P": 100 * p, "R": 100 * r, "F1": 100 * f1,
            "Acc": 100 * (tp + tn) / (tp + fp + fn + tn), "mAP": 100 * np.mean(aps)}


def test_tag_selection_hand_computed_s_pixel(fake, caplog):
    records, outputs = fake
    with caplog.at_level(logging.INFO):
        res = run(TagSelectionEvaluator(DATASET), records, outputs)
    assert list(res) == [f"tag_selection/{m}" for m in METHODS]
    # s_pixel: tp=3 fp=2 fn=1 tn=2; caption 1 ranks dog, frisbee, catches, grass:
    # AP = (1/1 + 2/2 + 3/4)/3; caption 2 AP = 1; caption 3 has no relevant tag (skipped)
    expected = {"P": 60.0, "R": 75.0, "F1": 2 * 60 * 75 / 135, "Acc": 62.5,
                "mAP": 100 * ((1 + 1 + 3 / 4) / 3 + 1) / 2}
    assert res["tag_selection/s_pixel"] == pytest.approx(expected)
    for method in METHODS:
        assert res[f"tag_selection/{method}"] == pytest.approx(
            brute_force_tag_metrics(records, outputs, method))
    assert "s_pixel" in caplog.text and "mAP" in caplog.text


def test_tag_selection_method_subset_and_missing_method(fake):
    records, outputs = fake
    evaluator = TagSelectionEvaluator(DATASET, methods=("nltk",), distributed=False)
    res = run(evaluator, records, outputs)
    assert list(res) == ["tag_selection/nltk"]
    del outputs[0]["tag_scores"]["s_text"]
    with pytest.raises(KeyError, match="s_text"):
        TagSelectionEvaluator(DATASET).process(records[:1], outputs[:1])


def read(path):
    return np.asarray(Image.open(path)).astype(int)


def test_caption_seg_against_loops(fake):
    records, outputs = fake
    res = run(CaptionSegEvaluator(DATASET, mask_threshold=0.5), records, outputs)["caption_seg"]
    counts = {c: [0, 0, 0] for c in (0, 1)}  # class -> TP, FP, FN
    per_caption, dominant_cov, secondary_cov = [], [], []
    for rec, out in zip(records, outputs):
        pred = (out["caption_mask"].numpy() >= 0.5).astype(int)
        gt, inst = read(rec["caption_mask_file"]), read(rec["instance_mask_file"])
        fg = [0, 0, 0]
        for y in range(H):
            for x in range(W):
                for c in (0, 1):
                    counts[c][0] += pred[y, x] == c and gt[y, x] == c
                    counts[c][1] += pred[y, x] == c and gt[y, x] != c
                    counts[c][2] += pred[y, x] != c and gt[y, x] == c
                fg[0] += pred[y, x] == 1 and gt[y, x] == 1
                fg[1] += pred[y, x] == 1 and gt[y, x] == 0
                fg[2] += pred[y, x] == 0 and gt[y, x] == 1
        per_caption.append(fg[0] / sum(fg) if sum(fg) else 1.0)
        for i, obj in enumerate(rec["objects"], start=1):
            area = (inst == i).sum()
            if area:
                cov = (pred.astype(bool) & (inst == i)).sum() / area
                (dominant_cov if obj["dominant"] else secondary_cov).append(cov)
    iou = [counts[c][0] / sum(counts[c]) for c in (0, 1)]
    fpr = [counts[c][1] / sum(counts[c]) for c in (0, 1)]
    fnr = [counts[c][2] / sum(counts[c]) for c in (0, 1)]
    for c in (0, 1):
        assert iou[c] + fpr[c] + fnr[c] == pytest.approx(1.0)
    assert res["CaptionIoU"] == pytest.approx(100 * np.mean(iou))
    assert res["mFPR"] == pytest.approx(np.mean(fpr))
    assert res["mFNR"] == pytest.approx(np.mean(fnr))
    assert res["IoU-background"] == pytest.approx(100 * iou[0])
    assert res["IoU-caption"] == pytest.approx(100 * iou[1])
    assert res["CaptionIoU_per_caption"] == pytest.approx(100 * np.mean(per_caption))
    assert res["coverage_dominant"] == pytest.approx(100 * np.mean(dominant_cov))
    assert res["coverage_secondary"] == pytest.approx(100 * np.mean(secondary_cov))


def test_caption_seg_all_zero_masks(fake, tmp_path):
    records, outputs = fake
    for rec, out in zip(records, outputs):
        zero_png = tmp_path / f"zero_{rec['image_id']}.png"
        rec["caption_mask_file"] = write_png(zero_png, np.zeros((H, W)))
        out["caption_mask"] = torch.zeros(H, W)
    res = run(CaptionSegEvaluator(DATASET), records, outputs)["caption_seg"]
    assert res["CaptionIoU"] == 100.0 and res["mFPR"] == 0.0 and res["mFNR"] == 0.0
    assert res["CaptionIoU_per_caption"] == 100.0
    assert res["coverage_dominant"] == 0.0 and res["coverage_secondary"] == 0.0


def test_caption_seg_shape_mismatch_is_a_clear_error(fake):
    records, outputs = fake
    outputs[0]["caption_mask"] = torch.zeros(H * 2, W * 2)
    with pytest.raises(ValueError, match="original image size"):
        CaptionSegEvaluator(DATASET).process(records[:1], outputs[:1])


def test_text_bias_hand_computed(fake):
    records, outputs = fake
    res = run(TextBiasEvaluator(DATASET), records, outputs)["text_bias"]
    # dominant: dog 0.9, cat 0.8 (bird is not a candidate: skipped); secondary: frisbee 0.3
    assert res == pytest.approx({
        "cos_dominant": 0.85, "cos_secondary": 0.3, "cos_gap": 0.55, "num_dominant": 2,
        "num_secondary": 1, "skipped_dominant": 1, "skipped_secondary": 0})


def test_zero_shot_single_object_records_only(fake):
    records, outputs = fake
    res = run(ZeroShotEvaluator(DATASET), records, outputs)["zero_shot"]
    assert res == {"accuracy": 50.0, "num_images": 2}  # cat right, bird wrong, record 0 skipped
    outputs[1]["class_logits"] = torch.zeros(7)
    with pytest.raises(ValueError, match="thing_classes"):
        ZeroShotEvaluator(DATASET).process(records[1:2], outputs[1:2])


def test_empty_evaluation_returns_nan_not_errors():
    res = ZeroShotEvaluator(DATASET).evaluate()
    assert math.isnan(res["zero_shot"]["accuracy"])
    res = TextBiasEvaluator(DATASET).evaluate()["text_bias"]
    assert math.isnan(res["cos_dominant"]) and res["num_dominant"] == 0
    assert math.isnan(CaptionSegEvaluator(DATASET).evaluate()["caption_seg"]["CaptionIoU"])


def test_build_caption_evaluators_combines_all_four(fake):
    records, outputs = fake
    results = run(build_caption_evaluators(DATASET, output_dir=None), records, outputs)
    assert list(results) == [f"tag_selection/{m}" for m in METHODS] + ["caption_seg", "text_bias", "zero_shot"]
    flat = flatten_results_dict(results)
    assert "tag_selection/s_pixel/F1" in flat and "caption_seg/CaptionIoU" in flat
    # reset() clears the state: a second run gives identical results
    again = flatten_results_dict(run(build_caption_evaluators(DATASET), records, outputs))
    assert again == pytest.approx(flat)
