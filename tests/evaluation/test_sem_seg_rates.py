"""SemSegRatesEvaluator: mFPR, mFNR beside detectron2's mIoU; IoU + FPR + FNR = 1 per class."""
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ttd_d2.data.datasets.synthetic import CorruptFileError
from ttd_d2.evaluation import SemSegRatesEvaluator
from ttd_d2.evaluation.metrics import confusion_rates

CLASSES = ["background", "circle", "square", "triangle"]
GT = np.array([[0, 0, 1, 1], [0, 1, 1, 255], [2, 2, 2, 0], [2, 2, 0, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 1, 0, 3], [2, 2, 3, 0], [2, 0, 0, 0]], dtype=np.int64)
PREPARE = "python tools/prepare_x.py"


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
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg", prepare=PREPARE)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_mean_fpr_and_fnr_by_hand(dataset):
    """The per-class means of FP / (TP + FP + FN) and FN / (TP + FP + FN), each under its own
    name (IoU + FPR + FNR = 1 holds with the two swapped)."""
    evaluator = SemSegRatesEvaluator(dataset, distributed=False)
    evaluator.reset()
    scores = torch.nn.functional.one_hot(torch.as_tensor(PRED), len(CLASSES)).permute(2, 0, 1).float()
    evaluator.process([{"file_name": "img.png"}], [{"sem_seg": scores}])
    res = evaluator.evaluate()["sem_seg"]
    # counted from GT / PRED (the ignored pixel left out): background TP 5 FP 2 FN 1; circle TP 3
    # FP 1 FN 1; square TP 3 FP 0 FN 2; triangle TP 0 FP 1 FN 0
    assert res["mFPR"] == pytest.approx((2 / 8 + 1 / 5 + 0 / 5 + 1 / 1) / 4)
    assert res["mFNR"] == pytest.approx((1 / 8 + 1 / 5 + 2 / 5 + 0 / 1) / 4)
    assert res["mIoU"] == pytest.approx(100 * (5 / 8 + 3 / 5 + 3 / 5 + 0) / 4)
    assert res["FPR-triangle"] == pytest.approx(100.0) and res["FNR-square"] == pytest.approx(100 * 2 / 5)


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


def _process(dataset, pred=PRED, **input_keys):
    evaluator = SemSegRatesEvaluator(dataset, distributed=False)
    evaluator.reset()
    scores = torch.nn.functional.one_hot(torch.as_tensor(pred), len(CLASSES)).permute(2, 0, 1).float()
    evaluator.process([{"file_name": "img.png", **input_keys}], [{"sem_seg": scores}])
    return evaluator


def _truncated_png(path):
    label = np.random.default_rng(0).integers(0, 4, (64, 64), dtype=np.uint8)
    Image.fromarray(label).save(path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("write, fragment", [
    (lambda p: Image.fromarray(np.where(GT == 2, 77, GT).astype(np.uint8)).save(p),  # counted by detectron2
     r"holds values \[77\] \(5 pixels\) that are neither one of the 4 classes .* \(0-3\) nor its ignore_label 255"),
    (lambda p: Image.fromarray(np.zeros((5, 4), np.uint8)).save(p), "is 5x4 \\(height x width\\), its prediction img.png is 4x4"),
    (lambda p: Image.fromarray(np.stack([GT] * 3, -1)).save(p), "has PIL mode RGB, not a single-channel label image"),
    (_truncated_png, "cannot read label file .*gt.png \\(OSError: image file is truncated"),
])
def test_a_bad_label_names_the_file_and_the_prepare_command(dataset, tmp_path, write, fragment):
    write(tmp_path / "gt.png")
    with pytest.raises(CorruptFileError, match=fragment) as error:
        _process(dataset)
    assert str(tmp_path / "gt.png") in str(error.value) and f"re-run `{PREPARE}`" in str(error.value)


def test_a_label_of_another_size_than_its_image_is_refused(dataset):
    with pytest.raises(CorruptFileError, match="gt.png is 4x4 \\(height x width\\), its image img.png is 8x4"):
        _process(dataset, height=8, width=4)
    with pytest.raises(ValueError, match="the model must output sem_seg at the input's height and width"):
        _process(dataset, pred=PRED[:3], height=4, width=4)


def _register(name, gt_files):
    DatasetCatalog.register(name, lambda: [{"file_name": f"img{i}.png", "sem_seg_file_name": f}
                                           for i, f in enumerate(gt_files)])
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg")


def _predictions(n):
    rng = np.random.default_rng(3)
    return [torch.as_tensor(rng.random((len(CLASSES), 4, 4)), dtype=torch.float32) for _ in range(n)]


def _worker(rank, world_size, port, name, gt_files, result_file):
    import os
    import pickle

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    _register(name, gt_files)
    evaluator = SemSegRatesEvaluator(name, distributed=True)
    evaluator.reset()
    preds = _predictions(len(gt_files))
    for i in range(rank, len(gt_files), world_size):
        evaluator.process([{"file_name": f"img{i}.png"}], [{"sem_seg": preds[i]}])
    with open(f"{result_file}.{rank}", "wb") as f:
        pickle.dump(evaluator.evaluate(), f)
    dist.barrier()
    os._exit(0)  # gloo's teardown at exit sometimes aborts (tests/evaluation/test_evaluation_distributed.py)


def test_two_process_rates_equal_single_process(tmp_path):
    import pickle
    import socket

    import torch.multiprocessing as mp

    rng = np.random.default_rng(4)
    gt_files = []
    for i in range(4):
        gt = rng.integers(0, len(CLASSES), (4, 4)).astype(np.uint8)
        Image.fromarray(gt).save(tmp_path / f"gt{i}.png")
        gt_files.append(str(tmp_path / f"gt{i}.png"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"test_rates_dist_{uuid.uuid4().hex[:8]}"
    mp.spawn(_worker, args=(2, port, name, gt_files, str(tmp_path / "res")), nprocs=2, join=True)
    with open(tmp_path / "res.0", "rb") as f:
        gathered = pickle.load(f)["sem_seg"]
    with open(tmp_path / "res.1", "rb") as f:
        assert pickle.load(f) is None
    _register(name, gt_files)
    try:
        single = SemSegRatesEvaluator(name, distributed=False)
        single.reset()
        for i, pred in enumerate(_predictions(4)):
            single.process([{"file_name": f"img{i}.png"}], [{"sem_seg": pred}])
        expected = single.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert gathered.keys() == expected.keys() and "mFPR" in gathered
    for key, value in expected.items():
        assert gathered[key] == pytest.approx(value, nan_ok=True)
