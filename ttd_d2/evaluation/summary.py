"""Collect detectron2 evaluation results into the quickstart's before/after summary."""
from typing import Dict, List, Mapping, Sequence

import numpy as np
from tabulate import tabulate

TAG_METHODS = ("s_image", "s_text", "s_pixel", "image_text", "nltk")
CAPTION_KEYS = ("CaptionIoU", "CaptionIoU_per_caption", "mFPR", "mFNR", "coverage_dominant", "coverage_secondary")

# (row label, path in the summary)
TABLE_ROWS = (
    ("cos(caption, dominant word)", ("text_bias", "cos_dominant")),
    ("cos(caption, secondary word)", ("text_bias", "cos_secondary")),
    ("CaptionIoU (2-class)", ("caption_seg", "CaptionIoU")),
    ("CaptionIoU per caption", ("caption_seg", "CaptionIoU_per_caption")),
    ("mFPR", ("caption_seg", "mFPR")),
    ("mFNR", ("caption_seg", "mFNR")),
    ("coverage dominant", ("caption_seg", "coverage_dominant")),
    ("coverage secondary", ("caption_seg", "coverage_secondary")),
    ("s_pixel F1", ("tag_selection", "s_pixel", "F1")),
    ("s_image R", ("tag_selection", "s_image", "R")),
    ("s_pixel R", ("tag_selection", "s_pixel", "R")),
    ("sem-seg mIoU", ("sem_seg", "mIoU")),
    ("zero-shot accuracy", ("zero_shot", "accuracy")),
    ("background threshold", ("sem_seg", "background_threshold")),
)


def summarize(results: Mapping[str, Mapping], background_threshold: float) -> Dict:
    """detectron2 results of one sem-seg and one caption dataset (``TTDTrainer.test``
    output, keyed by dataset) -> {"tag_selection": {method: {P, R, F1, Acc, mAP}},
    "caption_seg": {...}, "text_bias": {cos_dominant, cos_secondary}, "sem_seg": {mIoU,
    background_threshold}, "zero_shot": {accuracy}}."""
    merged: Dict = {}
    for per_dataset in results.values():
        merged.update(per_dataset)
    out = {
        "tag_selection": {m: dict(merged[f"tag_selection/{m}"]) for m in TAG_METHODS if f"tag_selection/{m}" in merged},
        "caption_seg": {k: merged["caption_seg"][k] for k in CAPTION_KEYS},
        "text_bias": {k: merged["text_bias"][k] for k in ("cos_dominant", "cos_secondary")},
        "sem_seg": {"mIoU": merged["sem_seg"]["mIoU"], "background_threshold": background_threshold},
        "zero_shot": {"accuracy": merged["zero_shot"]["accuracy"]},
    }
    return _plain(out)


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return float(tree)


# The columns of the benchmark tables (benchmarks/collect_ablations.py, collect_backbones.py):
# (header, path in a quickstart summary).
TABLE_COLUMNS = (
    ("CaptionIoU", ("caption_seg", "CaptionIoU")),
    ("per-caption IoU", ("caption_seg", "CaptionIoU_per_caption")),
    ("cov. dominant", ("caption_seg", "coverage_dominant")),
    ("cov. secondary", ("caption_seg", "coverage_secondary")),
    ("cos secondary", ("text_bias", "cos_secondary")),
    ("s_pixel F1", ("tag_selection", "s_pixel", "F1")),
    ("sem-seg mIoU", ("sem_seg", "mIoU")),
    ("zero-shot", ("zero_shot", "accuracy")),
)


def get_path(tree: Mapping, path: Sequence[str]) -> float:
    for key in path:
        tree = tree[key]
    return tree


def mean_summary(summaries: List[Dict]) -> Dict:
    """Element-wise mean of summaries with the same structure (e.g. several test seeds)."""
    first = summaries[0]
    if isinstance(first, Mapping):
        return {k: mean_summary([s[k] for s in summaries]) for k in first}
    return float(np.mean(summaries))


def before_after_table(before: Dict, after: Dict) -> str:
    """A pipe table of the headline numbers before and after TTD, with the change."""
    rows = []
    for label, path in TABLE_ROWS:
        b, a = get_path(before, path), get_path(after, path)
        rows.append([label, b, a, a - b])
    return tabulate(rows, headers=("", "before", "after TTD", "change"), tablefmt="pipe", floatfmt=".3f")


def _one_or_mean(per_split: Mapping[str, Dict], test_splits: Sequence[str]) -> Dict:
    """The summary of one test split, or the mean over several."""
    return per_split[test_splits[0]] if len(test_splits) == 1 else mean_summary([per_split[s] for s in test_splits])


def quickstart_report(before: Mapping, after: Mapping, test_splits: Sequence[str]) -> Dict:
    """tools/quickstart.py's results from each model's {setting: {split: summary}}, settings
    "calibrated" and "as_trained" (the masker): "before"/"after" with the calibrated masker
    (the mean over ``test_splits`` when several), "as_trained" {"before", "after"}, and with
    several test splits "per_split" {split: the same three}."""
    report = {"before": _one_or_mean(before["calibrated"], test_splits), "after": _one_or_mean(after["calibrated"], test_splits),
              "as_trained": {"before": _one_or_mean(before["as_trained"], test_splits),
                             "after": _one_or_mean(after["as_trained"], test_splits)}}
    if len(test_splits) > 1:
        report["per_split"] = {s: {"before": before["calibrated"][s], "after": after["calibrated"][s],
                                   "as_trained": {"before": before["as_trained"][s], "after": after["as_trained"][s]}}
                               for s in test_splits}
    return report


def print_quickstart_summary(report: Mapping, test_splits: Sequence[str]) -> None:
    """Prints tools/quickstart.py's ``report``: the two before/after tables (masker calibrated,
    masker as trained), TTD's starting masker and the recorded tag threshold."""
    calibration = report["calibration"]
    masker, splits = calibration["masker"], ", ".join(test_splits)
    print(f"\nSingle tag bias on the synthetic benchmark (held-out split(s): {splits}).")
    print(f"\nMasker calibrated on word-level segmentation of {masker['dataset']}, the same way for both models "
          f"(b = {masker['before']['b_calibrated']:.2f} before, {masker['after']['b_calibrated']:.2f} after TTD):")
    print(before_after_table(report["before"], report["after"]))
    print(f"\nMasker as trained (before: the base model's w {masker['before']['w']:.2f}, b {masker['before']['b_as_trained']:.2f};"
          f" after: the learnt w {masker['after']['w']:.2f}, b {masker['after']['b_as_trained']:.2f}):")
    print(before_after_table(report["as_trained"]["before"], report["as_trained"]["after"]))
    start = masker["before"]
    print(f"\nTTD's masker started at the calibrated boundary (cos {start['cos_threshold']:.2f}) with "
          + (f"the temperature calibrated for its min-max targets: w {start['target_w']:.2f} (word-target IoU "
             f"{start['target_iou']:.1f}, the softest within one standard error of the best, "
             f"{start['target_iou_best']:.1f} at w {start['target_w_best']:.2f}; {start['target_iou_model_w']:.1f} at the "
             f"base model's w {start['w']:.2f})"
             if masker["ttd_start_temperature"] == "calibrated" else f"the base model's w {start['w']:.2f}"))
    if "tag_threshold_calibrated" in calibration:  # a scoring method with a threshold
        print(f"\n{calibration['tag_scoring']} tag threshold calibrated on captions/val: "
              f"{calibration['tag_threshold_calibrated']:.2f} (F1 {calibration['tag_threshold_f1']:.1f}); "
              f"training used MODEL.TTD.TAG_THRESHOLD {calibration['tag_threshold_used']}")
