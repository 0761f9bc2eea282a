"""Multi-tag selection evaluator (CC3M-TagMask protocol 1: P / R / F1 / Acc / mAP)."""
import logging
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from tabulate import tabulate

from .distributed import gather_on_main
from .metrics import (
    average_precision,
    binary_confusion,
    mean_average_precision,
    precision_recall_f1_accuracy,
    tag_relevance,
    to_numpy,
)

SCORE_METHODS = ("s_image", "s_text", "s_pixel", "image_text")
BINARY_METHODS = ("nltk",)  # tag_scores already 0/1: selected = value >= 0.5
DEFAULT_METHODS = SCORE_METHODS + BINARY_METHODS


def caption_tag_statistics(
    candidate_tags: Sequence[str], gt_tags: Sequence[str], scores, threshold: float
) -> tuple:
    """Per-caption statistics of one method: (tp, fp, fn, tn, ap or None).

    scores: Float[K] aligned with ``candidate_tags``; a tag is selected iff
    score >= threshold; relevance = tag in ``gt_tags``; ap ranks the tags by score.
    """
    scores = to_numpy(scores).astype(np.float64).reshape(-1)
    if len(scores) != len(candidate_tags):
        raise ValueError(f"{len(candidate_tags)} candidate tags but {len(scores)} scores")
    relevant = tag_relevance(candidate_tags, gt_tags)
    tp, fp, fn, tn = binary_confusion(scores >= threshold, relevant)
    return tp, fp, fn, tn, average_precision(scores, relevant)


def summarize_tag_statistics(stats: List[tuple]) -> Dict[str, float]:
    """Dataset P / R / F1 / Acc (micro over all candidate tags) and mAP, in percent,
    from a list of ``caption_tag_statistics`` tuples."""
    counts = np.array([s[:4] for s in stats], dtype=np.int64).reshape(-1, 4).sum(axis=0)
    result = precision_recall_f1_accuracy(*(int(c) for c in counts))
    result["mAP"] = mean_average_precision(s[4] for s in stats)
    return result


class TagSelectionEvaluator(DatasetEvaluator):
    """Evaluates each tag-selection method against the caption's image-relevant tags.

    Results: ``{"tag_selection/<method>": {"P", "R", "F1", "Acc", "mAP"}}`` (percent).
    Score methods select ``score >= output["tag_threshold"]``; binary methods ("nltk")
    select their 0/1 values. mAP is over captions with at least one relevant candidate.
    """

    def __init__(self, dataset_name: str, methods=DEFAULT_METHODS, distributed=True):
        self._dataset_name = dataset_name
        self._methods = tuple(methods)
        self._distributed = distributed
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self):
        # one entry per caption: {method: (tp, fp, fn, tn, ap)} plus "_gt_not_candidate"
        self._per_caption: List[dict] = []

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            tags = list(output["tags"])
            scores = output["tag_scores"]
            missing = [m for m in self._methods if m not in scores]
            if missing:
                raise KeyError(
                    f"TagSelectionEvaluator: output['tag_scores'] lacks {missing} "
                    f"(has {sorted(scores)}); pass methods= to evaluate a subset"
                )
            entry = {}
            for method in self._methods:
                threshold = 0.5 if method in BINARY_METHODS else float(output["tag_threshold"])
                entry[method] = caption_tag_statistics(
                    tags, record["tags"], scores[method], threshold
                )
            candidates = {t.strip().lower() for t in tags}
            entry["_gt_not_candidate"] = sum(
                t.strip().lower() not in candidates for t in record["tags"]
            )
            # GT tags the loader matched to no caption word (CC3M-TagMask's match_tags)
            entry["_gt_unmatched"] = len(record.get("tags_unmatched", ()))
            self._per_caption.append(entry)

    def evaluate(self):
        per_caption = gather_on_main(self._per_caption, self._distributed)
        if per_caption is None:
            return None
        if not per_caption:
            self._logger.warning(f"TagSelectionEvaluator on {self._dataset_name}: no captions")
        results = OrderedDict(
            (m, summarize_tag_statistics([c[m] for c in per_caption])) for m in self._methods
        )
        self._log_table(results, len(per_caption), sum(c["_gt_not_candidate"] for c in per_caption),
                        sum(c.get("_gt_unmatched", 0) for c in per_caption))
        # one task per method: detectron2's print_csv_format needs flat {metric: number} dicts
        return OrderedDict((f"tag_selection/{m}", r) for m, r in results.items())

    def _log_table(self, results, num_captions, gt_not_candidate, gt_unmatched=0):
        keys = ("P", "R", "F1", "Acc", "mAP")
        rows = [[m] + [results[m][k] for k in keys] for m in results]
        table = tabulate(rows, headers=("method",) + keys, tablefmt="pipe", floatfmt=".1f")
        self._logger.info(
            f"Multi-tag selection on {self._dataset_name} ({num_captions} captions; "
            f"{gt_not_candidate} GT tags are not candidates and are not counted; {gt_unmatched} GT tags "
            f"match no caption word):\n{table}"
        )
