"""SemSegRatesEvaluator: mFPR, mFNR beside detectron2's mIoU; IoU + FPR + FNR = 1 per class."""
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ttd_d2.evaluation import SemSegRatesEvaluator
from ttd_d2.evaluation.metrics import confusion_rates

CLASSES = ["background", "circle", "square", "triangle"]
GT = np.array([[0, 0, 1, 1], [0, 1, 1, 255], [2, 2, 2, 0], [2, 2, 0, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 1, 0, 3], [2, 2, 3, 0], [2, 0, 0, 0]], dtype=np.int64)


def test_confusion_rates_by_hand():
    conf = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # rows: prediction, columns: ground truth
    rates = confusion_rates(conf)
    # class 0: TP 5, FP 1, FN 2; class 1: TP 3, FP 2, FN 1; class 2 absent: nan, left out
    np.testing.assert_allclose(rates["IoU"][:2], [5 / 8, 3 / 6])
    np.testing.assert_allclose(rates["FPR"][:2], [1 / 8, 2 / 6])
    np.testing.assert_allclose(rates["FNR"][:2], [2 / 8, 1 / 6])
    assert all(math.isnan(rates[k][2]) for k in ("IoU", "FPR", "FNR"))
    assert rates["mFPR"] == pytest.approx((1 / 8 + 2 / 6) / 2)


@pytest.fixture
def dataset(tmp_path):
    name = f"test_rates_{uuid.uuid4().hex[:8]}"
    Image.fromarray(GT).save(tmp_path / "gt.png")
    DatasetCatalog.register(name, lambda: [{"file_name": "img.png", "sem_seg_file_name": str(tmp_path / "gt.png")}])
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_evaluator_rates_sum_to_one_and_match_counts(dataset):
    evaluator = SemSegRatesEvaluator(dataset, distributed=False)
    evaluator.reset()
    scores = torch.nn.functional.one_hot(torch.as_tensor(PRED), len(CLASSES)).permute(2, 0, 1).float()
    evaluator.process([{"file_name": "img.png"}], [{"sem_seg": scores}])
    res = evaluator.evaluate()["sem_seg"]
    valid = GT != 255
    for c, name in enumerate(CLASSES):
        tp = np.sum((PRED == c) & (GT == c) & valid)
        fp = np.sum((PRED == c) & (GT != c) & valid)
        fn = np.sum((PRED != c) & (GT == c) & valid)
        assert res[f"FPR-{name}"] == pytest.approx(100 * fp / (tp + fp + fn))
        assert res[f"FNR-{name}"] == pytest.approx(100 * fn / (tp + fp + fn))
        iou = 0.0 if math.isnan(res[f"IoU-{name}"]) else res[f"IoU-{name}"]  # triangle: predicted, not in GT
        assert iou + res[f"FPR-{name}"] + res[f"FNR-{name}"] == pytest.approx(100)
    assert res["mIoU"] / 100 + res["mFPR"] + res["mFNR"] == pytest.approx(1)
