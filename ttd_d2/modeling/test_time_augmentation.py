"""Test-time augmentation of semantic segmentation: multi-scale and horizontal-flip averaging.

Kept apart from the model (as Mask2Former keeps its ``SemanticSegmentorWithTTA``): it only needs
a function that predicts score maps for an image of any size, e.g. the sliding-window inference
of ``TTDInference.semantic_segmentation``.
"""
import math
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .meta_arch.segmentation import upsample

__all__ = ["CLASS_SCORES", "mean_of_passes", "multi_scale_flip", "scale_passes", "scaled_size"]

# MODEL.SEG_INFERENCE.CLASS_SCORES: how class scores are formed (docs/EVALUATION.md).
CLASS_SCORES = ("ttd", "softmax")


def scaled_size(height: int, width: int, scale: float) -> tuple:
    """(H * scale, W * scale) rounded half up, at least 1 pixel each: the sizes of mmcv's
    ``rescale_size`` in the mmseg protocol the paper's numbers come from (597 x 0.5 -> 299;
    Python's ``round`` rounds halves to even and gives 298)."""
    def half_up(n: int) -> int:
        return max(1, math.floor(n * float(scale) + 0.5))

    return half_up(height), half_up(width)


def scale_passes(image: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> List[torch.Tensor]:
    """The protocol's passes of an image [1, 3, H, W]: per scale the image resized (bilinear,
    sizes rounded; 1.0 = the image as it is), with its left-right flip behind it when ``flip``
    ([2, 3, h, w]: an image and its flip share their windows' forwards)."""
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"MODEL.SEG_INFERENCE.SCALES must be positive numbers, got {list(scales)}")
    height, width = image.shape[-2:]
    passes = []
    for scale in scales:
        size = scaled_size(height, width, scale)
        scaled = image if size == (height, width) else F.interpolate(
            image, size=size, mode="bilinear", align_corners=False)
        passes.append(torch.cat([scaled, scaled.flip(-1)]) if flip else scaled)
    return passes


def mean_of_passes(outputs: Sequence[torch.Tensor], size: Tuple[int, int], flip: bool = False) -> torch.Tensor:
    """[C, H, W]: the mean of the passes' score maps (``outputs[i]`` [1 or 2, C, h, w] for
    ``scale_passes(...)[i]``), each flipped back where it was flipped and bilinearly resized to
    ``size`` (H, W)."""
    total, count = None, 0
    for out in outputs:
        for maps in ([out[0], out[1].flip(-1)] if flip else [out[0]]):
            maps = maps if tuple(maps.shape[-2:]) == tuple(size) else upsample(maps, tuple(size))
            total = maps if total is None else total + maps
            count += 1
    return total / count


def multi_scale_flip(
    predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """The mean of ``predict`` over scales (and horizontal flips) of an image.

    Args:
        predict: [B, 3, h, w] -> [B, C, h, w] score maps of images of any size; an image and
            its flip go through one call (B = 2), so their windows share the forwards.
        image: [1, 3, H, W] the (normalised) image.
        scales: resize factors of the image (bilinear, sizes rounded); 1.0 = the image as it is.
        flip: also predict each scaled image flipped left-right (its maps flipped back).
    Returns:
        [C, H, W]: sum over the len(scales) x (2 if flip else 1) passes of each pass's maps,
        bilinearly resized back to (H, W), divided by the number of passes. One scale 1.0
        without flip is ``predict(image)[0]`` itself. (``TTDInference`` calls the two halves,
        :func:`scale_passes` and :func:`mean_of_passes`, itself, to share window forwards
        across the passes.)
    """
    passes = scale_passes(image, scales, flip)
    return mean_of_passes([predict(p) for p in passes], tuple(image.shape[-2:]), flip)
