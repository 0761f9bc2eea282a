"""Semantic segmentation evaluation: detectron2's SemSegEvaluator plus mFPR and mFNR, with each
ground-truth label checked before it is counted."""
import numpy as np
from detectron2.evaluation import SemSegEvaluator

from ..data.datasets.record_fields import CorruptFileError
from .caption_seg import label_fix, read_label_png
from .metrics import confusion_rates

__all__ = ["SemSegRatesEvaluator"]


class SemSegRatesEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (same confusion matrix, gathering and mIoU) whose results also hold
    "mFPR", "mFNR" (fractions, like the paper's tables) and per-class "FPR-<name>",
    "FNR-<name>" (percent, like detectron2's "IoU-<name>"), from ``confusion_rates``: per class
    IoU + FPR + FNR = 1.

    Unlike detectron2's, ``process`` counts a label only if it is a readable single-channel image
    of its input's ``height`` x ``width`` (when given) and the prediction's size, whose values
    are classes (0 ... num_classes - 1) or ``ignore_label``: detectron2 counts another value into
    a wrong cell of the matrix. Otherwise ``CorruptFileError`` names the label file and the
    dataset's ``prepare`` command (a prediction of the wrong size: ``ValueError``).
    """

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            pred = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy().astype(int)
            gt = self._label(input, pred.shape)
            gt[gt == self._ignore_label] = self._num_classes
            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=self._conf_matrix.size,
            ).reshape(self._conf_matrix.shape)
            self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def _label(self, input, pred_shape) -> np.ndarray:
        """The checked label of ``input`` (Int[H, W], values as stored)."""
        file_name = self.input_file_to_gt_file.get(input["file_name"])
        if file_name is None:
            raise KeyError(f"{input['file_name']} is not an image of dataset '{self._dataset_name}'")
        fix = label_fix(self._dataset_name)
        gt = read_label_png(file_name, fix)
        image_shape = (int(input["height"]), int(input["width"])) if "height" in input and "width" in input else None
        if gt.shape != (image_shape or pred_shape):
            raise CorruptFileError(f"label file {file_name} is {gt.shape[0]}x{gt.shape[1]} (height x width), its "
                                   f"{'image' if image_shape else 'prediction'} {input['file_name']} is "
                                   f"{'x'.join(map(str, image_shape or pred_shape))}: {fix}")
        if gt.shape != pred_shape:
            raise ValueError(f"the prediction for {input['file_name']} is {pred_shape[0]}x{pred_shape[1]}, the image "
                             f"{gt.shape[0]}x{gt.shape[1]}: the model must output sem_seg at the input's height and width")
        bad = (gt < 0) | ((gt >= self._num_classes) & (gt != self._ignore_label))
        if bad.any():
            values = np.unique(gt[bad])
            raise CorruptFileError(
                f"label file {file_name} holds values {values[:5].tolist()}{' ...' if len(values) > 5 else ''} "
                f"({int(bad.sum())} pixels) that are neither one of the {self._num_classes} classes of dataset "
                f"'{self._dataset_name}' (0-{self._num_classes - 1}) nor its ignore_label {self._ignore_label}: {fix}")
        return gt

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
