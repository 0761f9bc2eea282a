"""Calibration of the masker on word-level segmentation of a sem-seg split whose class 0 is
background: the maps TTD builds its targets from. Two values, from one inference pass: the
boundary (the bias b at which the present classes' word masks best segment their regions) and
the temperature w at that boundary for TTD's min-max targets (the union of the present classes'
min-max masks against the union of their regions: the softest w within one standard error of
the best). ``tools/calibrate.py --what masker-bias-words | masker-words`` runs them from a config.
"""
import logging
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from .calibration import confusion_matrix, mean_iou
from .metrics import to_numpy

logger = logging.getLogger(__name__)


def _present_labels(gt: np.ndarray, num_classes: int, ignore_label: int) -> list:
    """The object labels (1..``num_classes``; 0 is background) present in a label map."""
    return [label for label in np.unique(gt) if 0 < label <= num_classes and label != ignore_label]


def _present_class_pairs(cos_maps: Sequence[np.ndarray], gts: Sequence[np.ndarray], ignore_label: int) -> list:
    """(class cosine map [H, W], its region: 1 inside, 0 outside, -1 ignored) for every class
    present in an image; channel c of ``cos_maps`` is label c + 1 (0 = background)."""
    return [(cos[label - 1], np.where(gt == ignore_label, -1, gt == label))
            for cos, gt in zip(cos_maps, gts) for label in _present_labels(gt, len(cos), ignore_label)]


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


# Candidate masker temperatures w for ``calibrate_word_masker`` (TCL's init is 10).
TARGET_WEIGHTS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.5, 15.0, 20.0, 30.0)


def word_target_confusions(
    cos_maps: Sequence[np.ndarray], gts: Sequence[np.ndarray], threshold: float, weights: Sequence[float],
    ignore_label: int,
) -> Dict[float, np.ndarray]:
    """Per image, the {outside, inside} confusion matrix of TTD's target on word-level
    segmentation, for each masker temperature ``w``: the union of the min-max targets of every
    present class, max_c minmax(sigmoid(w * cos_c + b)) (``distillation_targets`` with the
    ground-truth tags selected), ``>= 0.5``, against the union of their regions.

    The masker keeps its boundary ``cos = threshold`` (b = -w * threshold, so every hard mask
    stays the same). A large w saturates the sigmoid, so a class whose map stays below the
    boundary (a small, weakly named object) gets only the few pixels at its peak; a small w
    makes the map nearly linear in cos, so min-max puts its target's edge halfway between the
    image's lowest and highest cosine. Inputs as ``word_mask_sweep``'s; images without a present
    class are left out. Returns {w: Int[N, 2, 2]}."""
    from ..modeling.ttd.losses import distillation_targets, masker

    images = []
    for cos, gt in zip(cos_maps, gts):
        present = _present_labels(gt, len(cos), ignore_label)
        if present:
            region = np.where(gt == ignore_label, -1, np.isin(gt, present))
            images.append((torch.from_numpy(cos[np.asarray(present) - 1]).double()[None], region))

    def confusions(w):
        per_image = []
        for cos, region in images:
            _, union = distillation_targets(masker(cos, w, -w * threshold), torch.ones(cos.shape[:2], dtype=torch.bool))
            per_image.append(confusion_matrix((to_numpy(union[0]) >= 0.5).astype(np.int64), region.astype(np.int64),
                                              2, ignore_label=-1))
        return np.stack(per_image) if per_image else np.zeros((0, 2, 2), dtype=np.int64)

    return {float(w): confusions(w) for w in weights}


def softest_within_one_se(confusions: Dict[float, np.ndarray], num_resamples: int = 200, seed: int = 0) -> Dict:
    """The one-standard-error rule (Breiman et al., 1984) for the masker temperature: the smallest
    w whose 2-class IoU is at most one standard error below the best w's, the standard error
    being that of the paired difference (the same images resampled for both, ``num_resamples``
    bootstrap draws, fixed ``seed``). The IoU is flat near its maximum (on the shipped synthetic
    base, w 3 and 4 differ by 0.01 points and a device's rounding decides between them), but
    TTD's coverage of secondary objects is not: the rule takes the softest temperature that the
    validation split cannot tell from the best. ``confusions``: ``word_target_confusions``'.
    Returns {"w", "w_best", "iou": {w: IoU}, "deficit": {w: best IoU - IoU}, "se": {w: its
    standard error}}."""
    iou = {w: mean_iou(conf.sum(0)) for w, conf in confusions.items()}
    best = max(iou, key=iou.get)
    count = len(confusions[best])
    if count == 0:
        raise ValueError("no image of the split holds a class of its label set: nothing to calibrate the temperature on")
    draws = np.random.default_rng(seed).integers(0, count, (num_resamples, count))
    multiplicity = np.stack([np.bincount(d, minlength=count) for d in draws])  # [R, N]: times each image is drawn

    def resampled(conf):  # [R] IoUs of the resampled splits
        return np.array([mean_iou(c.reshape(2, 2)) for c in multiplicity @ conf.reshape(count, 4)])

    best_resampled = resampled(confusions[best])
    se = {w: float(np.std(best_resampled - resampled(conf))) for w, conf in confusions.items()}
    deficit = {w: iou[best] - value for w, value in iou.items()}
    chosen = min(w for w in iou if deficit[w] <= se[w])
    return {"w": chosen, "w_best": best, "iou": iou, "deficit": deficit, "se": se}


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
    boundary (the cos threshold t of ``calibrate_word_masker_bias``), then the temperature w for
    TTD's min-max targets at that boundary: the softest w whose word-level target IoU
    (``word_target_confusions``) is within one standard error of the best
    (``softest_within_one_se``). The bias is what the hard masks (and so the evaluations) depend
    on; the temperature is what TTD's min-max targets depend on: too sharp a masker makes each
    target a hard mask of its word's highest-scoring region, too soft a one a linear ramp.
    Returns {"cos_threshold": t, "word_iou", "b_for_model_w": -model w * t (the bias for the
    model's own w, ``calibrate_word_masker_bias``'s), "w", "b": -w * t (the calibrated masker),
    "target_iou" (at w), "w_best", "target_iou_best", "target_iou_model_w": the targets' IoU at
    the model's w, "bias_sweep": {t: IoU}, "target_sweep": {w: IoU}, "target_se": {w: standard
    error of its deficit}}."""
    cos_maps, gts, ignore_label = _word_cosines(model, data_loader, dataset_name)
    bias_sweep = word_mask_sweep(cos_maps, gts, thresholds, ignore_label)
    threshold = max(bias_sweep, key=bias_sweep.get)
    model_w = float(model.masker.w)
    rule = softest_within_one_se(word_target_confusions(cos_maps, gts, threshold, sorted({*weights, model_w}), ignore_label))
    w, sweep = rule["w"], rule["iou"]
    logger.info("word masker on %s: cos threshold %.3f (IoU %.2f), w %.2f (target IoU %.2f; best %.2f at w %.2f; "
                "%.2f at the model's w %.2f)", dataset_name, threshold, bias_sweep[threshold], w, sweep[w],
                sweep[rule["w_best"]], rule["w_best"], sweep[model_w], model_w)
    return {"cos_threshold": threshold, "word_iou": bias_sweep[threshold], "b_for_model_w": -model_w * threshold,
            "w": w, "b": -w * threshold, "target_iou": sweep[w], "w_best": rule["w_best"],
            "target_iou_best": sweep[rule["w_best"]], "target_iou_model_w": sweep[model_w],
            "bias_sweep": bias_sweep, "target_sweep": sweep, "target_se": rule["se"]}
