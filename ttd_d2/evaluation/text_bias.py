"""Single-tag-bias evaluator: cos(caption, dominant word) vs cos(caption, secondary words)."""
import logging
from collections import OrderedDict
from typing import List, Optional, Sequence

from detectron2.evaluation import DatasetEvaluator
from tabulate import tabulate

from .distributed import gather_on_main
from .metrics import cosine_at_word, mean_or_nan


def caption_object_cosines(
    candidate_tags: Sequence[str], tag_caption_cos, objects: Sequence[dict]
) -> List[tuple]:
    """Per object: (dominant: bool, cos or None). cos = ``tag_caption_cos`` (Float[K]) at the
    candidates equal to the object's category word; None when the word is not a candidate."""
    return [
        (
            bool(obj.get("dominant", False)),
            cosine_at_word(candidate_tags, tag_caption_cos, obj["category"]),
        )
        for obj in objects
    ]


def summarize_object_cosines(per_object: List[tuple]) -> "OrderedDict[str, float]":
    """cos_dominant / cos_secondary = mean cos over found dominant / secondary objects
    (nan if none), cos_gap = their difference, and the found / skipped object counts."""

    def found(dominant: bool) -> List[float]:
        return [c for d, c in per_object if d == dominant and c is not None]

    def skipped(dominant: bool) -> int:
        return sum(1 for d, c in per_object if d == dominant and c is None)

    cos_dominant, cos_secondary = mean_or_nan(found(True)), mean_or_nan(found(False))
    return OrderedDict(
        [
            ("cos_dominant", cos_dominant),
            ("cos_secondary", cos_secondary),
            ("cos_gap", cos_dominant - cos_secondary),
            ("num_dominant", len(found(True))),
            ("num_secondary", len(found(False))),
            ("skipped_dominant", skipped(True)),
            ("skipped_secondary", skipped(False)),
        ]
    )


class TextBiasEvaluator(DatasetEvaluator):
    """Results ``{"text_bias": summarize_object_cosines}`` from ``output["tag_caption_cos"]``.

    Objects whose category word is not among ``output["tags"]`` are skipped and counted.
    """

    def __init__(self, dataset_name: str, distributed=True):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self):
        self._per_object: List[tuple] = []

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            self._per_object.extend(
                caption_object_cosines(output["tags"], output["tag_caption_cos"], record["objects"])
            )

    def evaluate(self) -> Optional[OrderedDict]:
        per_object = gather_on_main(self._per_object, self._distributed)
        if per_object is None:
            return None
        results = summarize_object_cosines(per_object)
        table = tabulate(
            [list(results.values())], headers=list(results), tablefmt="pipe", floatfmt=".3f"
        )
        self._logger.info(f"Text bias on {self._dataset_name}:\n{table}")
        return OrderedDict(text_bias=results)
