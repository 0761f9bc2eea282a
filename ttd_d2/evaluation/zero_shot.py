"""Zero-shot image classification evaluator on single-object caption records."""
import logging
from collections import OrderedDict
from typing import List, Optional

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from tabulate import tabulate

from .distributed import gather_on_main
from .metrics import mean_or_nan, to_numpy, top1_correct


class ZeroShotEvaluator(DatasetEvaluator):
    """Top-1 accuracy (percent) of ``argmax(output["class_logits"])`` over the records with
    exactly one object, against ``objects[0]["category_id"]``.

    Results: ``{"zero_shot": {"accuracy": percent (nan if no such record), "num_images": n}}``.
    If the dataset's metadata has ``thing_classes``, logits must have that length.
    """

    def __init__(self, dataset_name: str, distributed=True):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._logger = logging.getLogger(__name__)
        thing_classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        self._num_classes = len(thing_classes) if thing_classes else None
        self.reset()

    def reset(self):
        self._correct: List[bool] = []

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            if len(record["objects"]) != 1:
                continue
            logits = to_numpy(output["class_logits"]).reshape(-1)
            if self._num_classes is not None and len(logits) != self._num_classes:
                raise ValueError(
                    f"class_logits has {len(logits)} entries but {self._dataset_name} "
                    f"has {self._num_classes} thing_classes"
                )
            self._correct.append(top1_correct(logits, record["objects"][0]["category_id"]))

    def evaluate(self) -> Optional[OrderedDict]:
        correct = gather_on_main(self._correct, self._distributed)
        if correct is None:
            return None
        accuracy = 100.0 * mean_or_nan(float(c) for c in correct)
        results = OrderedDict([("accuracy", accuracy), ("num_images", len(correct))])
        table = tabulate(
            [list(results.values())], headers=list(results), tablefmt="pipe", floatfmt=".1f"
        )
        self._logger.info(f"Zero-shot classification on {self._dataset_name}:\n{table}")
        return OrderedDict(zero_shot=results)
