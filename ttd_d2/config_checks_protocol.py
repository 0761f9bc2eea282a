"""Config checks of the test-time protocol (``MODEL.SEG_INFERENCE`` multi-scale, class scores,
PAMR; ``MODEL.CLIP.PROMPT_TEMPLATE_SET``: docs/EVALUATION.md); ``config_checks.py``
calls them."""
import math
from typing import List

from .config_checks_values import Problem, choice, number
from .modeling.backbone.prompt_templates import TEMPLATE_SETS
from .modeling.kernel_choice import KERNELS
from .modeling.pamr import PAMR_KERNELS
from .modeling.test_time_augmentation import CLASS_SCORES


def _positive_list(key: str, values, integer: bool, fix: str = "") -> Problem:
    """A non-empty list of positive numbers (integers when ``integer``)."""
    kind = int if integer else (int, float)
    if isinstance(values, (list, tuple)) and values and all(
            isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values):
        return None
    return f"{key} = {values!r}: must be a non-empty list of positive {'integers' if integer else 'numbers'}{fix}"


def _size_by_dataset(key: str, pairs) -> Problem:
    """A list of [dataset name, positive integer] pairs, each name once."""
    ok = isinstance(pairs, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and p[0]
        and isinstance(p[1], int) and not isinstance(p[1], bool) and p[1] > 0 for p in pairs)
    if ok and len({p[0] for p in pairs}) == len(pairs):
        return None
    return (f"{key} = {pairs!r}: must be a list of [dataset name, short side in pixels] pairs, each dataset once "
            "(e.g. [['ttd_coco_stuff171_val', 448], ['ttd_cityscapes19_val', 560]]; [] = INPUT.MIN_SIZE_TEST for all)")


def protocol_problems(cfg) -> List[Problem]:
    """The keys of the test-time protocol (read by the model's inference, so by ``build_model``)."""
    test, template_set = cfg.MODEL.SEG_INFERENCE, cfg.MODEL.CLIP.PROMPT_TEMPLATE_SET
    return [
        None if template_set == "" else choice(
            "MODEL.CLIP.PROMPT_TEMPLATE_SET", template_set, tuple(TEMPLATE_SETS), " or '' (MODEL.CLIP.PROMPT_TEMPLATES)"),
        _size_by_dataset("MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET", test.MIN_SIZE_TEST_BY_DATASET),
        number("MODEL.SEG_INFERENCE.WINDOW_BATCH", test.WINDOW_BATCH, lambda v: v >= 0, ">= 0", integer=True,
                fix=" (0 = all windows of a scale in one forward)"),
        _positive_list("MODEL.SEG_INFERENCE.SCALES", test.SCALES, integer=False,
                       fix=" (resize factors, e.g. [1.0, 0.5, 1.5, 2.0]; [1.0] = single scale)"),
        choice("MODEL.SEG_INFERENCE.CLASS_SCORES", test.CLASS_SCORES, CLASS_SCORES),
        number("MODEL.SEG_INFERENCE.LOGIT_SCALE", test.LOGIT_SCALE, lambda v: v > 0, "> 0"),
        number("MODEL.SEG_INFERENCE.PROB_THRESHOLD", test.PROB_THRESHOLD, lambda v: 0 <= v <= 1, "in [0, 1]",
                fix=" (a class probability of CLASS_SCORES 'softmax')"),
        number("MODEL.SEG_INFERENCE.PAMR.NUM_ITER", test.PAMR.NUM_ITER, lambda v: v >= 0, ">= 0", integer=True,
                fix=" (0 = off)"),
        _positive_list("MODEL.SEG_INFERENCE.PAMR.DILATIONS", test.PAMR.DILATIONS, integer=True,
                       fix=" (e.g. [1, 2, 4, 8, 12, 24])"),
        choice("MODEL.SEG_INFERENCE.PAMR.KERNEL", test.PAMR.KERNEL, PAMR_KERNELS),
        choice("MODEL.SEG_INFERENCE.STITCH_KERNEL", test.STITCH_KERNEL, KERNELS),
    ]
