"""Pure metric functions for the TTD evaluation protocols (no I/O, no distributed code).

Conventions: percentages are in [0, 100] (P, R, F1, Acc, mAP, IoU, coverage, accuracy);
mFPR / mFNR are fractions in [0, 1] like the paper's tables. A mean over an empty set is
``nan`` ("not measured"); a ratio with an empty denominator inside a defined metric follows
the rule documented on each function and never raises.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

NAN = float("nan")


def to_numpy(x) -> np.ndarray:
    """Tensor (any device / dtype) or array-like -> numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def mean_or_nan(values: Iterable[float]) -> float:
    """Arithmetic mean as a Python float; ``nan`` for an empty iterable."""
    values = list(values)
    return float(np.mean(values)) if values else NAN


# --------------------------------------------------------------------------- binary counts
def binary_confusion(pred, gt) -> Tuple[int, int, int, int]:
    """Confusion counts of two boolean arrays of the same shape.

    Returns (tp, fp, fn, tn) as Python ints, the positive class being ``True``.
    """
    pred = to_numpy(pred).astype(bool)
    gt = to_numpy(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"binary_confusion: shape mismatch {pred.shape} vs {gt.shape}")
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    tn = int(pred.size - tp - fp - fn)
    return tp, fp, fn, tn


# ----------------------------------------------------------------------- multi-tag selection
def tag_relevance(candidate_tags: Sequence[str], gt_tags: Sequence[str]) -> np.ndarray:
    """Bool[K]: candidate k is relevant iff it is one of ``gt_tags`` (case-insensitive).

    Candidate words absent from ``gt_tags`` (including unknown words) are irrelevant.
    """
    gt = {t.strip().lower() for t in gt_tags}
    return np.array([t.strip().lower() in gt for t in candidate_tags], dtype=bool)


def precision_recall_f1_accuracy(tp: int, fp: int, fn: int, tn: int) -> Dict[str, float]:
    """Micro P, R, F1, Acc in percent from summed counts.

    A ratio with a zero denominator is 0 (P with nothing selected, R with nothing relevant,
    F1 with P + R = 0, Acc with no candidates).
    """
    def ratio(num, den):
        return 100.0 * num / den if den > 0 else 0.0

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    accuracy = ratio(tp + tn, tp + fp + fn + tn)
    return {"P": precision, "R": recall, "F1": f1, "Acc": accuracy}


def average_precision(scores, relevant) -> Optional[float]:
    """Average precision (fraction in [0, 1]) of ranking items by ``scores`` (Float[K]).

    Definition (tie-safe, independent of the order of equal scores):
    ``AP = mean over relevant k of |{j relevant: s_j >= s_k}| / |{j: s_j >= s_k}|``,
    i.e. the precision when thresholding at each relevant item's score; tied items enter
    together (equals sklearn's ``average_precision_score``). Returns None when no item is
    relevant (AP undefined).
    """
    scores = to_numpy(scores).astype(np.float64).reshape(-1)
    relevant = to_numpy(relevant).astype(bool).reshape(-1)
    if scores.shape != relevant.shape:
        raise ValueError(f"average_precision: {scores.shape} scores vs {relevant.shape} labels")
    if not relevant.any():
        return None
    at_or_above = scores[None, :] >= scores[relevant][:, None]  # [R, K]
    retrieved = at_or_above.sum(axis=1)
    retrieved_relevant = (at_or_above & relevant[None, :]).sum(axis=1)
    return float(np.mean(retrieved_relevant / retrieved))


def mean_average_precision(ap_values: Iterable[Optional[float]]) -> float:
    """mAP in percent over the defined APs (None entries, i.e. captions without any
    relevant candidate, are skipped); ``nan`` when none is defined."""
    return 100.0 * mean_or_nan(ap for ap in ap_values if ap is not None)


# ------------------------------------------------------------------- text-level segmentation
def two_class_segmentation_rates(tp: int, fp: int, fn: int, tn: int) -> Dict[str, object]:
    """IoU / FPR / FNR of the 2-class problem {background, caption} from summed
    foreground counts (caption = positive class).

    Per class c: IoU_c = TP/(TP+FP+FN), FPR_c = FP/(TP+FP+FN), FNR_c = FN/(TP+FP+FN)
    (so they sum to 1). For background, TP = tn, FP = fn, FN = fp. A class with
    TP+FP+FN = 0 (absent from both prediction and GT) is left out of the means.

    Returns {"IoU": Float[2], "FPR": Float[2], "FNR": Float[2]} (fractions, nan for a
    left-out class; index 0 = background, 1 = caption) and "CaptionIoU" (percent),
    "mFPR", "mFNR" (fractions); the means are nan only when both classes are left out.
    """
    rates = confusion_rates([[tn, fn], [fp, tp]])  # rows: predicted background / caption
    return {
        "IoU": rates["IoU"],
        "FPR": rates["FPR"],
        "FNR": rates["FNR"],
        "CaptionIoU": 100.0 * rates["mIoU"],
        "mFPR": rates["mFPR"],
        "mFNR": rates["mFNR"],
    }


def confusion_rates(conf_matrix) -> Dict[str, np.ndarray]:
    """Per-class IoU / FPR / FNR (fractions) of a K-class confusion matrix [K, K] (rows =
    prediction, columns = ground truth: detectron2 SemSegEvaluator's layout, its ignore row and
    column removed).

    Per class c: IoU_c = TP/(TP+FP+FN), FPR_c = FP/(TP+FP+FN), FNR_c = FN/(TP+FP+FN), so they sum
    to 1; nan for a class neither predicted nor in the ground truth. Means over the other
    classes, as SemSegEvaluator's mIoU (a class predicted but absent from the ground truth
    counts, with IoU 0 and FPR 1): returns {"IoU", "FPR", "FNR": Float[K], "mIoU", "mFPR",
    "mFNR": float}.
    """
    conf = np.asarray(conf_matrix, dtype=np.float64)
    tp = conf.diagonal()
    fp, fn = conf.sum(axis=1) - tp, conf.sum(axis=0) - tp
    union = tp + fp + fn
    valid = union > 0
    out = {}
    for name, count in (("IoU", tp), ("FPR", fp), ("FNR", fn)):
        rate = np.full(len(tp), np.nan)
        rate[valid] = count[valid] / union[valid]
        out[name] = rate
        out["m" + name] = float(rate[valid].mean()) if valid.any() else NAN
    return out


def foreground_iou(tp: int, fp: int, fn: int) -> float:
    """IoU (fraction) of one caption's foreground; 1.0 when prediction and GT are both empty."""
    union = tp + fp + fn
    return tp / union if union > 0 else 1.0


def object_overlaps(pred, instance_mask, num_objects: int) -> List[Tuple[int, int]]:
    """Per object i (1..num_objects): (|pred AND instance_mask == i|, |instance_mask == i|).

    pred: Bool[H, W]; instance_mask: Int[H, W] (0 = background, i = objects[i-1]).
    Returns a list of ``num_objects`` (intersection, area) int pairs.
    """
    pred = to_numpy(pred).astype(bool)
    instance_mask = to_numpy(instance_mask).astype(np.int64)
    if pred.shape != instance_mask.shape:
        raise ValueError(f"object_overlaps: shape mismatch {pred.shape} vs {instance_mask.shape}")
    ids = np.clip(instance_mask, 0, num_objects + 1).reshape(-1)  # out-of-range ids -> ignored
    area = np.bincount(ids, minlength=num_objects + 2)
    inter = np.bincount(ids[pred.reshape(-1)], minlength=num_objects + 2)
    return [(int(inter[i]), int(area[i])) for i in range(1, num_objects + 1)]


def coverage_percent(overlaps: Iterable[Tuple[int, int]]) -> float:
    """Mean of intersection / area * 100 over (intersection, area) pairs with area > 0;
    ``nan`` when there is none."""
    return 100.0 * mean_or_nan(inter / area for inter, area in overlaps if area > 0)


# ------------------------------------------------------------------------------- text bias
def cosine_at_word(candidate_tags: Sequence[str], cosines, word: str) -> Optional[float]:
    """Mean of ``cosines`` (Float[K]) at the positions where ``candidate_tags`` equals
    ``word`` (case-insensitive, whole word); None if the word is not a candidate."""
    cosines = to_numpy(cosines).astype(np.float64).reshape(-1)
    if len(cosines) != len(candidate_tags):
        raise ValueError(f"cosine_at_word: {len(candidate_tags)} tags vs {len(cosines)} cosines")
    word = word.strip().lower()
    hits = [k for k, tag in enumerate(candidate_tags) if tag.strip().lower() == word]
    return float(cosines[hits].mean()) if hits else None


# ------------------------------------------------------------------------------- zero-shot
def top1_correct(class_logits, label: int) -> bool:
    """Whether argmax of Float[C] logits equals ``label`` (first index wins ties)."""
    return int(np.argmax(to_numpy(class_logits).reshape(-1))) == int(label)
