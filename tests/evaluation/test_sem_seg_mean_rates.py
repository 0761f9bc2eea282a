"""SemSegRatesEvaluator's mFPR and mFNR on a hand-counted confusion: the per-class means of
FP / (TP + FP + FN) and FN / (TP + FP + FN) (docs/EVALUATION.md), each under its own name."""
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ttd_d2.evaluation import SemSegRatesEvaluator

CLASSES = ["background", "circle", "square"]
GT = np.array([[0, 0, 0, 1], [1, 2, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 0, 1, 1], [1, 1, 1, 0]])  # the last pixel is ignored


@pytest.fixture
def dataset(tmp_path):
    name = f"test_mean_rates_{uuid.uuid4().hex[:8]}"
    Image.fromarray(GT).save(tmp_path / "gt.png")
    DatasetCatalog.register(name, lambda: [{"file_name": "img.png", "sem_seg_file_name": str(tmp_path / "gt.png")}])
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_mean_fpr_and_fnr_by_hand(dataset):
    evaluator = SemSegRatesEvaluator(dataset, distributed=False)
    evaluator.reset()
    scores = torch.nn.functional.one_hot(torch.as_tensor(PRED), len(CLASSES)).permute(2, 0, 1).float()
    evaluator.process([{"file_name": "img.png"}], [{"sem_seg": scores}])
    res = evaluator.evaluate()["sem_seg"]
    # background: TP 2, FP 0, FN 1 (union 3); circle: TP 2, FP 3, FN 0 (union 5);
    # square: TP 0, FP 0, FN 2 (union 2)
    assert res["mFPR"] == pytest.approx((0 / 3 + 3 / 5 + 0 / 2) / 3)  # 0.2
    assert res["mFNR"] == pytest.approx((1 / 3 + 0 / 5 + 2 / 2) / 3)  # 4/9
    assert res["mIoU"] == pytest.approx(100 * (2 / 3 + 2 / 5 + 0) / 3)
    assert res["FPR-circle"] == pytest.approx(100 * 3 / 5) and res["FNR-circle"] == pytest.approx(0.0)
    assert res["FPR-square"] == pytest.approx(0.0) and res["FNR-square"] == pytest.approx(100.0)
