"""Calibration on a validation split: one inference pass, then the metric for every candidate
value. Here: the constant background score of open-vocabulary segmentation (mIoU on a sem-seg
split), the masker bias on a caption split (CaptionIoU) and the tag-selection threshold (F1 on
a caption split's ground-truth tags); the masker on word-level segmentation (its bias and the
temperature of TTD's targets) is in :mod:`.word_calibration`.

Each ``calibrate_*`` function iterates ``data_loader`` once and shows no progress itself: wrap
the loader (e.g. in ``tqdm``) to see it. ``tools/calibrate.py`` runs them from a config.
"""
import logging
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from .metrics import to_numpy
from .tag_selection import BINARY_METHODS, SCORE_METHODS, caption_tag_statistics, summarize_tag_statistics

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
        for inputs in data_loader:
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
    for inputs in data_loader:
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


def tag_threshold_sweep(captions: Sequence[tuple], thresholds: Sequence[float]) -> Dict[float, float]:
    """Dataset F1 (percent) of the selection ``score >= t`` for each threshold ``t``.

    ``captions``: one ``(candidate tags [K], ground-truth tags, scores Float[K])`` per caption;
    the counts are those of the tag-selection evaluator (``caption_tag_statistics``)."""
    return {
        float(t): summarize_tag_statistics([caption_tag_statistics(tags, gt, s, t) for tags, gt, s in captions])["F1"]
        for t in thresholds
    }


@torch.no_grad()
def calibrate_tag_threshold(
    model, data_loader, dataset_name: str, method: Optional[str] = None,
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2)),
) -> Tuple[float, Dict[float, float]]:
    """``MODEL.TTD.TAG_THRESHOLD`` that maximises the F1 of the tag selection of ``method``
    (default: the model's ``tag_scoring``) against the ground-truth ``tags`` of a caption split.
    Ties go to the threshold nearest 0.5. Returns (threshold, {threshold: F1})."""
    method = method or model.tag_scoring
    if method not in SCORE_METHODS:
        reason = "selects without a threshold" if method in BINARY_METHODS else "is unknown"
        raise ValueError(f"MODEL.TTD.TAG_SCORING '{method}' {reason}; calibrate one of {SCORE_METHODS}")
    captions = []
    for inputs in data_loader:
        for x, out in zip(inputs, model(inputs)):
            if "tags" not in x:
                raise KeyError(
                    f"records of '{dataset_name}' have no ground-truth 'tags': calibrate the tag threshold "
                    "on a caption split (e.g. synth_captions_val)"
                )
            captions.append((out["tags"], x["tags"], out["tag_scores"][method]))
    sweep = tag_threshold_sweep(captions, thresholds)
    best = max(sweep, key=lambda t: (sweep[t], -abs(t - 0.5)))
    logger.info("%s tag threshold on %s: %.2f (F1 %.2f)", method, dataset_name, best, sweep[best])
    return best, sweep
