"""Text-level (caption) segmentation evaluator (CC3M-TagMask protocol 2)."""
import logging
from collections import OrderedDict
from typing import List

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from tabulate import tabulate

from ..data.datasets.label_conversion import read_label

from .distributed import gather_on_main
from .metrics import (
    binary_confusion,
    coverage_percent,
    foreground_iou,
    mean_or_nan,
    object_overlaps,
    to_numpy,
    two_class_segmentation_rates,
)
from .tag_selection import TagSelectionEvaluator
from .text_bias import TextBiasEvaluator
from .zero_shot import ZeroShotEvaluator


def read_label_png(file_name: str, fix: str = "re-create it from the dataset's release") -> np.ndarray:
    """Single-channel label PNG (8 or 16 bit) -> Int[H, W] by ``read_label`` (no EXIF transform,
    no resize): a missing, truncated, corrupt or multi-channel file raises an error naming it and ``fix``."""
    return read_label(file_name, fix).astype(np.int64)


def label_fix(dataset_name: str) -> str:
    """What fixes a bad label file of ``dataset_name``: its metadata's ``prepare`` command."""
    prepare = MetadataCatalog.get(dataset_name).get("prepare", None)
    return f"re-run `{prepare}`" if prepare else ("replace it from the dataset's release (datasets/README.md; "
                                                  "CC3M-TagMask: docs/CC3M_TAGMASK.md)")


def check_same_shape(record: dict, **arrays) -> None:
    """Raise a clear ValueError unless all arrays are [record height, record width]."""
    expected = (int(record["height"]), int(record["width"]))
    wrong = {name: a.shape for name, a in arrays.items() if tuple(a.shape) != expected}
    if wrong:
        raise ValueError(
            f"{record.get('file_name', '?')}: expected masks of (height, width) = {expected}, "
            f"got {wrong}; the model must output caption_mask at the original image size"
        )


def caption_image_statistics(pred, gt_caption, instance_mask, objects) -> dict:
    """Small per-image statistics for ``summarize_caption_statistics``.

    pred, gt_caption: Bool[H, W]; instance_mask: Int[H, W] (i = objects[i-1]).
    Returns {"counts": (tp, fp, fn, tn) of the caption class,
             "dominant": [(inter, area)], "secondary": [(inter, area)]}.
    """
    overlaps = object_overlaps(pred, instance_mask, len(objects))
    return {
        "counts": binary_confusion(pred, gt_caption),
        "dominant": [o for o, obj in zip(overlaps, objects) if obj.get("dominant", False)],
        "secondary": [o for o, obj in zip(overlaps, objects) if not obj.get("dominant", False)],
    }


def summarize_caption_statistics(stats: List[dict]) -> "OrderedDict[str, float]":
    """Dataset metrics from per-image statistics.

    CaptionIoU (percent), mFPR, mFNR (fractions) from counts summed over the dataset;
    IoU-background / IoU-caption (percent); CaptionIoU_per_caption = mean over images of
    the caption-class IoU (percent, 100 when prediction and GT are both empty);
    coverage_dominant = mean over images with a non-empty dominant object of the covered
    fraction of the dominant object(s) (percent); coverage_secondary = mean over all
    non-empty secondary objects (percent).
    """
    counts = np.array([s["counts"] for s in stats], dtype=np.int64).reshape(-1, 4).sum(axis=0)
    rates = two_class_segmentation_rates(*(int(c) for c in counts))
    per_caption_iou = [foreground_iou(*s["counts"][:3]) for s in stats]
    dominant_per_image = [
        (sum(i for i, _ in s["dominant"]), sum(a for _, a in s["dominant"])) for s in stats
    ]
    secondary_objects = [o for s in stats for o in s["secondary"]]
    return OrderedDict(
        [
            ("CaptionIoU", rates["CaptionIoU"]),
            ("mFPR", rates["mFPR"]),
            ("mFNR", rates["mFNR"]),
            ("IoU-background", 100.0 * float(rates["IoU"][0])),
            ("IoU-caption", 100.0 * float(rates["IoU"][1])),
            ("CaptionIoU_per_caption", 100.0 * mean_or_nan(per_caption_iou)),
            ("coverage_dominant", coverage_percent(dominant_per_image)),
            ("coverage_secondary", coverage_percent(secondary_objects)),
        ]
    )


class CaptionSegEvaluator(DatasetEvaluator):
    """Caption-mask segmentation: results ``{"caption_seg": summarize_caption_statistics}``.

    Predicted caption region = ``output["caption_mask"] >= mask_threshold``; GT caption
    region = caption PNG value > 0; objects from the instance PNG (value i = objects[i-1]).
    """

    def __init__(self, dataset_name: str, mask_threshold: float = 0.5, distributed=True):
        self._dataset_name = dataset_name
        self._mask_threshold = float(mask_threshold)
        self._distributed = distributed
        self._fix = label_fix(dataset_name)
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self):
        self._per_image: List[dict] = []

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            pred = to_numpy(output["caption_mask"]).astype(np.float32) >= self._mask_threshold
            gt_caption = read_label_png(record["caption_mask_file"], self._fix) > 0
            # datasets without objects (CC3M-TagMask): no instance masks, coverage is nan
            instance_mask = (read_label_png(record["instance_mask_file"], self._fix) if "instance_mask_file" in record
                             else np.zeros(gt_caption.shape, dtype=np.int64))
            check_same_shape(
                record, caption_mask=pred, gt_caption_mask=gt_caption, instance_mask=instance_mask
            )
            self._per_image.append(
                caption_image_statistics(pred, gt_caption, instance_mask, record.get("objects", []))
            )

    def evaluate(self):
        per_image = gather_on_main(self._per_image, self._distributed)
        if per_image is None:
            return None
        if not per_image:
            self._logger.warning(f"CaptionSegEvaluator on {self._dataset_name}: no images")
        results = summarize_caption_statistics(per_image)
        table = tabulate(
            [list(results.values())], headers=list(results), tablefmt="pipe", floatfmt=".3f"
        )
        self._logger.info(
            f"Text-level segmentation on {self._dataset_name} ({len(per_image)} images, "
            f"mask threshold {self._mask_threshold}):\n{table}"
        )
        return OrderedDict(caption_seg=results)


def build_caption_evaluators(dataset_name: str, output_dir=None, *, distributed=True, mask_threshold: float = 0.5):
    """All four caption-dataset evaluators (tag selection, caption segmentation, text bias,
    zero-shot) combined; the last two only when the dataset has objects (metadata
    ``has_objects``, default True; CC3M-TagMask has none). ``output_dir`` is accepted for the ``build_evaluator(cfg,
    dataset_name, output_folder)`` convention and is not used (results are returned)."""
    evaluators = [
        TagSelectionEvaluator(dataset_name, distributed=distributed),
        CaptionSegEvaluator(dataset_name, mask_threshold=mask_threshold, distributed=distributed),
    ]
    if MetadataCatalog.get(dataset_name).get("has_objects", True):
        evaluators += [TextBiasEvaluator(dataset_name, distributed=distributed),
                       ZeroShotEvaluator(dataset_name, distributed=distributed)]
    return DatasetEvaluators(evaluators)
