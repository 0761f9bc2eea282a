"""The gate of the synthetic benchmark: can TTD improve this base model's caption masks?
(docs/SYNTHETIC_BENCHMARK.md, "The gate"; run by ``benchmarks/dense_diagnostics.py``).

TTD pulls a caption's mask towards its target, the union of the min-max normalised masks of the
tags it selects (docs/METHOD.md). That helps only where the target is better than the caption
mask it replaces, and only shows where the caption mask is biased towards the dominant object.
The gate asks both on a caption validation split, with the masker calibrated on word-level
segmentation (``calibrate_word_masker_bias``):

    target IoU (s_pixel selection, min-max)   >= caption-mask IoU + GATE_IOU_MARGIN (5)
    coverage dominant - coverage secondary   >= GATE_BIAS_MARGIN (20 coverage points)

To say where a target falls short, it is decomposed by which tags enter it (``SELECTIONS``) and
with or without min-max normalisation (``NORMALIZATIONS``). IoUs are the caption evaluators'
2-class CaptionIoU, coverages theirs (``caption_seg.summarize_caption_statistics``), percent.

Shapes: K = candidate tags of a caption, h x w = its patch grid, H x W = the image.
"""
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..data.synthetic.captions import BACKGROUND_VOCABULARY, caption_words
from ..data.synthetic.render import CLASSES
from ..modeling.ttd.losses import minmax_normalize
from .caption_seg import summarize_caption_statistics
from .metrics import binary_confusion, mean_or_nan, tag_relevance, to_numpy, two_class_segmentation_rates

GATE_IOU_MARGIN = 5.0
GATE_BIAS_MARGIN = 20.0
# Which tags enter the target: the s_pixel selection as TTD trains; without the words that
# describe the background (BACKGROUND_VOCABULARY: the texture words and "background" itself,
# whose maps cover the background, which a caption's region excludes); only its object (class)
# words; exactly the caption's ground-truth tags. Evaluation captions of generator version >= 2
# never name the background, so on those splits "s_pixel_no_background" equals "s_pixel" and
# every caption is in the "others" half of ``target_iou_s_pixel_minmax``; both still measure
# version-1 splits and other caption datasets.
SELECTIONS = ("s_pixel", "s_pixel_no_background", "object_words", "gt_tags")
NORMALIZATIONS = ("minmax", "none")  # min-max normalised tag masks (as TTD trains), raw masker outputs
OBJECT_WORDS = frozenset(CLASSES)
# Per-caption statistics of a target mask (min-max) -> the report's key: the s_pixel selection's
# target (as TTD trains) and the ground-truth tags' (a perfect selection's).
TARGET_STATISTICS = {"target": "target_mask", "target_gt_tags": "target_mask_gt_tags"}


def auc(inside, outside) -> float:
    """P(a random ``inside`` value > a random ``outside`` value), ties counted half (the
    Mann-Whitney statistic; 0.5 = no separation). Float[N], Float[M] -> float; nan if either is empty."""
    inside, outside = np.asarray(inside, np.float64).ravel(), np.sort(np.asarray(outside, np.float64).ravel())
    if not len(inside) or not len(outside):
        return float("nan")
    below = np.searchsorted(outside, inside, side="left")
    not_above = np.searchsorted(outside, inside, side="right")
    return float(((below + not_above) / 2).mean() / len(outside))


def object_aucs(tag_maps, tags: Sequence[str], instance_mask, objects: Sequence[dict]) -> List[Tuple[bool, float]]:
    """(dominant, AUC of its word's map) for each object named by a candidate tag.

    tag_maps: Float[K, H, W] at the image size; instance_mask: Int[H, W] (i = objects[i-1]).
    Objects that are empty or cover the whole image (no inside or no outside) are skipped.
    """
    tag_maps, instance_mask = to_numpy(tag_maps), to_numpy(instance_mask)
    result = []
    for i, obj in enumerate(objects):
        inside = instance_mask == i + 1
        if obj["category"] in tags and inside.any() and not inside.all():
            tag_map = tag_maps[list(tags).index(obj["category"])]
            result.append((bool(obj.get("dominant", False)), auc(tag_map[inside], tag_map[~inside])))
    return result


def names_background(caption: str) -> bool:
    """Whether a caption has a word of ``BACKGROUND_VOCABULARY`` ("... on a striped background")."""
    return not BACKGROUND_VOCABULARY.isdisjoint(caption_words(caption))


def tag_selections(tags: Sequence[str], s_pixel_selected, gt_tags: Sequence[str]) -> Dict[str, np.ndarray]:
    """Bool[K] per name of ``SELECTIONS`` for one caption's candidate ``tags``, given the s_pixel
    selection (Bool[K], score >= threshold) and the caption's ground-truth tags."""
    s_pixel = to_numpy(s_pixel_selected).astype(bool).reshape(-1)
    if len(s_pixel) != len(tags):
        raise ValueError(f"tag_selections: {len(tags)} tags vs {len(s_pixel)} selection flags")
    background = np.array([t in BACKGROUND_VOCABULARY for t in tags], dtype=bool)
    objects = np.array([t in OBJECT_WORDS for t in tags], dtype=bool)
    return {
        "s_pixel": s_pixel,
        "s_pixel_no_background": s_pixel & ~background,
        "object_words": s_pixel & objects,
        "gt_tags": tag_relevance(tags, gt_tags),
    }


def target_union(tag_masks: torch.Tensor, selected, normalization: str = "minmax") -> torch.Tensor:
    """The target of one caption at patch resolution: max over the selected tags of their masks
    [K, h, w] (min-max normalised per map when ``normalization`` is "minmax", the raw masker
    outputs when "none") -> [h, w]; all zeros when no tag is selected (as in training)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    selected = torch.as_tensor(to_numpy(selected).astype(bool), device=tag_masks.device).reshape(-1)
    if not selected.any():
        return tag_masks.new_zeros(tag_masks.shape[-2:])
    masks = tag_masks[selected]
    return (minmax_normalize(masks) if normalization == "minmax" else masks).amax(0)


def target_counts(
    tag_masks: torch.Tensor, selections: Dict[str, np.ndarray], gt_caption, to_image: Callable, threshold: float = 0.5
) -> Dict[str, Tuple[int, int, int, int]]:
    """Caption-class confusion counts (tp, fp, fn, tn) of every target of one caption against its
    ground-truth region Bool[H, W], keyed "<selection>/<normalization>". ``to_image`` maps a
    [h, w] patch-grid map to [H, W] (``maps_to_image``); a target pixel is in when >= ``threshold``."""
    counts = {}
    for name, selected in selections.items():
        for norm in NORMALIZATIONS:
            target = to_image(target_union(tag_masks, selected, norm))
            counts[f"{name}/{norm}"] = binary_confusion(to_numpy(target) >= threshold, gt_caption)
    return counts


def two_class_iou(counts) -> float:
    """2-class CaptionIoU (percent) of summed (tp, fp, fn, tn), as the caption evaluator's."""
    return two_class_segmentation_rates(*(int(c) for c in counts))["CaptionIoU"]


def gate_verdict(target_iou: float, caption_iou: float, coverage_dominant: float, coverage_secondary: float) -> Dict:
    """PASS when target IoU >= caption-mask IoU + GATE_IOU_MARGIN and coverage dominant - secondary
    >= GATE_BIAS_MARGIN (a nan fails). Each margin is its gap minus the required gap (>= 0 passes)."""
    iou_gap, bias_gap = target_iou - caption_iou, coverage_dominant - coverage_secondary
    iou_margin, bias_margin = iou_gap - GATE_IOU_MARGIN, bias_gap - GATE_BIAS_MARGIN
    passed = bool(iou_margin >= 0 and bias_margin >= 0)
    return {
        "verdict": "PASS" if passed else "FAIL",
        "target_minus_caption_iou": iou_gap, "required_iou_gap": GATE_IOU_MARGIN, "iou_margin": iou_margin,
        "dominant_minus_secondary": bias_gap, "required_bias_gap": GATE_BIAS_MARGIN, "bias_margin": bias_margin,
    }


def summarize_gate(per_image: Sequence[Dict]) -> Dict:
    """The gate report of a caption split from per-caption statistics, each
    {"targets": ``target_counts``, "names_background": bool, "caption": the caption evaluator's
    ``caption_image_statistics`` of the caption mask, "target" (optional): the same of the target
    (s_pixel, min-max), "aucs": ``object_aucs``}.

    Returns {"target_iou": {selection: {normalization: IoU}}, "target_iou_s_pixel_minmax":
    {"names_background", "others": IoU over those captions}, "caption_mask":
    ``summarize_caption_statistics``, "target_mask": the same of the target (when given: does the
    target cover the secondary objects the caption mask misses?), "target_mask_gt_tags": the same
    of the ground-truth tags' target (when given: would a perfect selection?), "mask_bias":
    coverage dominant - secondary,
    "tag_map_auc": {"dominant", "secondary": mean AUC}, "gate": ``gate_verdict``,
    "num_captions": int}."""
    def iou(key, images):
        return two_class_iou(np.sum([s["targets"][key] for s in images], axis=0).reshape(4)) if images else float("nan")

    target_iou = {sel: {norm: iou(f"{sel}/{norm}", per_image) for norm in NORMALIZATIONS} for sel in SELECTIONS}
    caption = summarize_caption_statistics([s["caption"] for s in per_image])
    aucs = [a for s in per_image for a in s["aucs"]]
    return {
        "target_iou": target_iou,
        "target_iou_s_pixel_minmax": {
            "names_background": iou("s_pixel/minmax", [s for s in per_image if s["names_background"]]),
            "others": iou("s_pixel/minmax", [s for s in per_image if not s["names_background"]]),
        },
        "caption_mask": dict(caption),
        **{out: dict(summarize_caption_statistics([s[key] for s in per_image]))
           for key, out in TARGET_STATISTICS.items() if per_image and all(key in s for s in per_image)},
        "mask_bias": caption["coverage_dominant"] - caption["coverage_secondary"],
        "tag_map_auc": {"dominant": mean_or_nan(v for d, v in aucs if d), "secondary": mean_or_nan(v for d, v in aucs if not d)},
        "gate": gate_verdict(target_iou["s_pixel"]["minmax"], caption["CaptionIoU"],
                             caption["coverage_dominant"], caption["coverage_secondary"]),
        "num_captions": len(per_image),
    }
