"""Semantic segmentation evaluation: detectron2's SemSegEvaluator plus mFPR and mFNR."""
from detectron2.evaluation import SemSegEvaluator

from .metrics import confusion_rates

__all__ = ["SemSegRatesEvaluator"]


class SemSegRatesEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (same confusion matrix, gathering and mIoU) whose results also hold
    "mFPR", "mFNR" (fractions, like the paper's tables) and per-class "FPR-<name>",
    "FNR-<name>" (percent, like detectron2's "IoU-<name>"), from ``confusion_rates``: per class
    IoU + FPR + FNR = 1."""

    def evaluate(self):
        results = super().evaluate()  # sums the processes' matrices into the main one's
        if results is None:  # not the main process
            return results
        rates = confusion_rates(self._conf_matrix[:-1, :-1])  # the last row / column: ignored pixels
        res = results["sem_seg"]
        res["mFPR"], res["mFNR"] = rates["mFPR"], rates["mFNR"]
        for i, name in enumerate(self._class_names):
            res[f"FPR-{name}"], res[f"FNR-{name}"] = 100 * rates["FPR"][i], 100 * rates["FNR"][i]
        return results
