"""Calibration on a validation split: one inference pass, then the metric for every candidate
value. Four values are calibrated: the constant background score of open-vocabulary
segmentation (mIoU on a sem-seg split), the masker bias (CaptionIoU on a caption split, or, for
the word maps TTD builds its targets from, 2-class IoU of each present class word's mask on a
sem-seg split), the masker temperature w for TTD's min-max targets (their 2-class IoU on
the same sem-seg split, at the calibrated boundary, with every present class selected) and the tag-selection threshold (F1 on a
caption split's ground-truth tags).

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


def _present_class_pairs(cos_maps: Sequence[np.ndarray], gts: Sequence[np.ndarray], ignore_label: int) -> list:
    """(class cosine map [H, W], its region: 1 inside, 0 outside, -1 ignored) for every class
    present in an image; channel c of ``cos_maps`` is label c + 1 (0 = background)."""
    pairs = []
    for cos, gt in zip(cos_maps, gts):
        for label in np.unique(gt):
            if 0 < label <= len(cos) and label != ignore_label:
                pairs.append((cos[label - 1], np.where(gt == ignore_label, -1, gt == label)))
    return pairs


def _pairs_iou(pairs: Sequence[tuple], predict) -> float:
    """2-class IoU (percent) of ``predict(cos) -> bool [H, W]`` summed over all (map, region) pairs
    into one {outside, inside} confusion matrix."""
    conf = np.zeros((2, 2), dtype=np.int64)
    for cos, inside in pairs:
        conf += confusion_matrix(predict(cos).astype(np.int64), inside.astype(np.int64), 2, ignore_label=-1)
    return mean_iou(conf)


def word_mask_sweep(
    cos_maps: Sequence[np.ndarray], gts: Sequence[np.ndarray], thresholds: Sequence[float], ignore_label: int
) -> Dict[float, float]:
    """2-class IoU (percent) of word-level segmentation for each cosine threshold ``t``.

    ``cos_maps``: per image, Float[C, H, W] cosine maps of the C object classes (channel c is
    label c + 1); ``gts``: per image, Int[H, W] labels (0 = background, ``ignore_label`` skipped).
    For every class present in an image, its region ``cos >= t`` is compared with its
    ground-truth region; the counts of all (image, present class) pairs are summed into one
    {outside, inside} confusion matrix, whose ``mean_iou`` is the value."""
    pairs = _present_class_pairs(cos_maps, gts, ignore_label)
    return {float(t): _pairs_iou(pairs, lambda cos: cos >= t) for t in thresholds}


# Candidate masker temperatures w for ``word_target_sweep`` (TCL's init is 10).
TARGET_WEIGHTS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.5, 15.0, 20.0, 30.0)


def word_target_sweep(
    cos_maps: Sequence[np.ndarray], gts: Sequence[np.ndarray], threshold: float, weights: Sequence[float],
    ignore_label: int,
) -> Dict[float, float]:
    """2-class IoU (percent) of TTD's target on word-level segmentation, for each masker
    temperature ``w``: per image, the union of the min-max targets of every present class,
    max_c minmax(sigmoid(w * cos_c + b)) (``distillation_targets`` with the ground-truth tags
    selected), ``>= 0.5``, against the union of their regions; counts summed over the images.

    The masker keeps its boundary ``cos = threshold`` (b = -w * threshold, so every hard mask
    stays the same). A large w saturates the sigmoid, so a class whose map stays below the
    boundary (a small, weakly named object) gets only the few pixels at its peak; a small w
    makes the map nearly linear in cos, so min-max puts its target's edge halfway between the
    image's lowest and highest cosine. Inputs as ``word_mask_sweep``'s. Returns {w: IoU}."""
    from ..modeling.ttd.losses import distillation_targets, masker

    images = []
    for cos, gt in zip(cos_maps, gts):
        present = [label for label in np.unique(gt) if 0 < label <= len(cos) and label != ignore_label]
        if present:
            region = np.where(gt == ignore_label, -1, np.isin(gt, present))
            images.append((torch.from_numpy(cos[np.asarray(present) - 1]).double()[None], region))

    def target_iou(w):
        conf = np.zeros((2, 2), dtype=np.int64)
        for cos, region in images:
            _, union = distillation_targets(masker(cos, w, -w * threshold), torch.ones(cos.shape[:2], dtype=torch.bool))
            conf += confusion_matrix((to_numpy(union[0]) >= 0.5).astype(np.int64), region.astype(np.int64), 2, ignore_label=-1)
        return mean_iou(conf)

    return {float(w): target_iou(w) for w in weights}


def _word_cosines(model, data_loader, dataset_name: str) -> Tuple[list, list, int]:
    """The class cosine maps (Float[C, H, W] per image, ``word_mask_sweep``'s) of ``model`` on a
    sem-seg split whose class 0 is background, with the label maps and the ignore label. The
    model's masker is set to w 1, b 0 for the pass (its class scores then give back the cosines)
    and restored after."""
    from detectron2.data.detection_utils import read_image

    meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "background_threshold"):
        raise ValueError(f"'{dataset_name}' has no background class (metadata background_threshold): calibrate the "
                         "word masker on a sem-seg split whose class 0 is background, e.g. synth_semseg_val")
    gt_files = {r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get(dataset_name)}
    saved = model.masker.w.clone(), model.masker.b.clone()
    model.masker.w.fill_(1.0)  # masker = sigmoid(cos): the class scores give back the cosines
    model.masker.b.fill_(0.0)
    cos_maps, gts = [], []
    try:
        for inputs in data_loader:
            for x, out in zip(inputs, model(inputs)):
                # channel 0 is the constant background; averaging over sliding windows or flips
                # (if set) averages sigmoid(cos), so the cosines are then approximate
                cos_maps.append(to_numpy(torch.logit(out["sem_seg"][1:].float())))
                gts.append(np.asarray(read_image(gt_files[x["file_name"]])).astype(np.int64))
    finally:
        model.masker.w.copy_(saved[0])
        model.masker.b.copy_(saved[1])
    return cos_maps, gts, meta.ignore_label


WORD_THRESHOLDS = tuple(np.arange(-0.2, 0.61, 0.02))


@torch.no_grad()
def calibrate_word_masker_bias(
    model, data_loader, dataset_name: str, thresholds: Sequence[float] = WORD_THRESHOLDS
) -> Tuple[float, Dict[float, float]]:
    """Masker bias b for which the masks of class words (mask >= 0.5, i.e. cos >= -b / w) best
    segment their classes on a sem-seg split (``word_mask_sweep``): word-level segmentation,
    the maps TTD's targets are made of, where ``calibrate_masker_bias`` fits the caption's mask.
    Returns (b, {cos threshold: 2-class IoU})."""
    cos_maps, gts, ignore_label = _word_cosines(model, data_loader, dataset_name)
    sweep = word_mask_sweep(cos_maps, gts, thresholds, ignore_label)
    best = max(sweep, key=sweep.get)
    bias = -float(model.masker.w) * best
    logger.info("word masker bias on %s: %.3f (cos threshold %.3f, IoU %.2f)", dataset_name, bias, best, sweep[best])
    return bias, sweep


@torch.no_grad()
def calibrate_word_masker(
    model, data_loader, dataset_name: str, thresholds: Sequence[float] = WORD_THRESHOLDS,
    weights: Sequence[float] = TARGET_WEIGHTS,
) -> Dict:
    """Both masker parameters on word-level segmentation of a sem-seg split, in one pass: the
    boundary (the cos threshold t of ``calibrate_word_masker_bias``), then the temperature w
    whose min-max word targets at that boundary best segment their classes
    (``word_target_sweep``). The bias is what the hard masks (and so the evaluations) depend on;
    the temperature is what TTD's min-max targets depend on: too sharp a masker makes each
    target a hard mask of its word's highest-scoring region, too soft a one makes it a linear
    ramp. Returns {"cos_threshold": t, "word_iou", "b_for_model_w": -model w * t (the bias for
    the model's own w, ``calibrate_word_masker_bias``'s), "w", "b": -w * t (the calibrated
    masker), "target_iou", "target_iou_model_w": the targets' IoU at the model's w,
    "bias_sweep": {t: IoU}, "target_sweep": {w: IoU}}."""
    cos_maps, gts, ignore_label = _word_cosines(model, data_loader, dataset_name)
    bias_sweep = word_mask_sweep(cos_maps, gts, thresholds, ignore_label)
    threshold = max(bias_sweep, key=bias_sweep.get)
    model_w = float(model.masker.w)
    target_sweep = word_target_sweep(cos_maps, gts, threshold, sorted({*weights, model_w}), ignore_label)
    w = max(target_sweep, key=target_sweep.get)
    logger.info("word masker on %s: cos threshold %.3f (IoU %.2f), w %.2f (target IoU %.2f; %.2f at the model's w %.2f)",
                dataset_name, threshold, bias_sweep[threshold], w, target_sweep[w], target_sweep[model_w], model_w)
    return {"cos_threshold": threshold, "word_iou": bias_sweep[threshold], "b_for_model_w": -model_w * threshold,
            "w": w, "b": -w * threshold, "target_iou": target_sweep[w], "target_iou_model_w": target_sweep[model_w],
            "bias_sweep": bias_sweep, "target_sweep": target_sweep}


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
