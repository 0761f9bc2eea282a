"""Calibrate the constant background score of open-vocabulary segmentation on a validation
split: one inference pass, then mIoU for every candidate threshold from confusion matrices."""
import logging
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

from .metrics import to_numpy

logger = logging.getLogger(__name__)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    """[num_classes, num_classes] counts, rows = ground truth, columns = prediction."""
    keep = gt != ignore_label
    index = gt[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU in percent over the classes present in the ground truth or the prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    valid = union > 0
    return float(100.0 * (tp[valid] / union[valid]).mean()) if valid.any() else float("nan")


def threshold_sweep(
    fg_score: Sequence[np.ndarray], fg_label: Sequence[np.ndarray], gt: Sequence[np.ndarray],
    thresholds: Sequence[float], num_classes: int, ignore_label: int,
) -> Dict[float, float]:
    """mIoU per threshold, where a pixel is background unless its best foreground score
    ``fg_score`` [H, W] reaches the threshold (then class ``fg_label`` [H, W], 1-based)."""
    result = {}
    for t in thresholds:
        conf = np.zeros((num_classes, num_classes), dtype=np.int64)
        for score, label, target in zip(fg_score, fg_label, gt):
            conf += confusion_matrix(np.where(score >= t, label, 0), target, num_classes, ignore_label)
        result[float(t)] = mean_iou(conf)
    return result


@torch.no_grad()
def calibrate_background_threshold(
    model, data_loader, dataset_name: str, thresholds: Sequence[float] = tuple(np.arange(0.02, 0.99, 0.02))
) -> Tuple[float, Dict[float, float]]:
    """Best background threshold of ``model`` (a ``TTD`` in eval mode) on a sem-seg split
    whose class 0 is background; returns it with the whole sweep {threshold: mIoU}."""
    from detectron2.data.detection_utils import read_image

    meta = MetadataCatalog.get(dataset_name)
    gt_files = {r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get(dataset_name)}
    saved = model.background_threshold
    model.background_threshold = 0.0  # channel 0 = 0: the others are the foreground scores
    scores, labels, gts = [], [], []
    try:
        for inputs in tqdm(data_loader, desc=f"calibrating on {dataset_name}", leave=False):
            for x, out in zip(inputs, model(inputs)):
                fg = to_numpy(out["sem_seg"][1:])
                scores.append(fg.max(0))
                labels.append(fg.argmax(0) + 1)
                gts.append(np.asarray(read_image(gt_files[x["file_name"]])))
    finally:
        model.background_threshold = saved
    sweep = threshold_sweep(scores, labels, gts, thresholds, len(meta.stuff_classes), meta.ignore_label)
    best = max(sweep, key=lambda t: (sweep[t], -abs(t - 0.5)))
    logger.info("background threshold on %s: %.3f (mIoU %.2f)", dataset_name, best, sweep[best])
    return best, sweep


@torch.no_grad()
def calibrate_masker_bias(
    model, data_loader, dataset_name: str, thresholds: Sequence[float] = tuple(np.arange(-0.2, 0.41, 0.02))
) -> Tuple[float, Dict[float, float]]:
    """Masker bias b for which a caption's region (mask >= 0.5, i.e. cos >= -b / w) has the
    best 2-class CaptionIoU on a caption split. TCL's b = -2.5 suits its CLIP's cosine range;
    another model needs its own. Returns (b, {cos threshold: CaptionIoU})."""
    from detectron2.data.detection_utils import read_image

    records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name)}
    cos_maps, gts = [], []
    for inputs in tqdm(data_loader, desc=f"calibrating the masker on {dataset_name}", leave=False):
        for x, out in zip(inputs, model(inputs)):
            cos_maps.append(to_numpy(out["caption_cos"]))
            gts.append(np.asarray(read_image(records[x["file_name"]]["caption_mask_file"])) > 0)
    sweep = {}
    for t in thresholds:
        conf = np.zeros((2, 2), dtype=np.int64)
        for cos, gt in zip(cos_maps, gts):
            conf += confusion_matrix((cos >= t).astype(np.int64), gt.astype(np.int64), 2, ignore_label=-1)
        sweep[float(t)] = mean_iou(conf)
    best = max(sweep, key=sweep.get)
    bias = -float(model.masker.w) * best
    logger.info("masker bias on %s: %.3f (cos threshold %.3f, CaptionIoU %.2f)", dataset_name, bias, best, sweep[best])
    return bias, sweep
