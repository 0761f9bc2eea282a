"""Open-vocabulary semantic segmentation from dense CLIP features (inference helpers)."""
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F


def split_synonyms(class_names: Sequence[str]) -> Tuple[List[str], torch.Tensor]:
    """Comma-separated synonyms ("person, people") -> (flat names [S], owner class index [S])."""
    names, owner = [], []
    for idx, entry in enumerate(class_names):
        synonyms = [s.strip() for s in entry.split(",") if s.strip()]
        if not synonyms:
            raise ValueError(f"class {idx} has an empty name: {entry!r}")
        names += synonyms
        owner += [idx] * len(synonyms)
    return names, torch.tensor(owner, dtype=torch.long)


def max_over_synonyms(scores: torch.Tensor, owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Max-pool [S, H, W] synonym scores into [num_classes, H, W] class scores."""
    out = scores.new_full((num_classes, *scores.shape[1:]), float("-inf"))
    index = owner.to(scores.device).view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    return out.scatter_reduce(0, index, scores, reduce="amax")


def sliding_windows(height: int, width: int, crop: int, stride: int) -> List[Tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) windows of size <= crop covering an image, the last flush with the border."""
    if crop <= 0 or not 0 < stride <= crop:
        raise ValueError(f"sliding window needs 0 < stride <= crop, got crop {crop}, stride {stride}")
    def starts(size):
        if size <= crop:
            return [0]
        s = list(range(0, size - crop, stride)) + [size - crop]
        return sorted(set(s))

    return [(y, x, min(y + crop, height), min(x + crop, width)) for y in starts(height) for x in starts(width)]


def slide_inference(
    predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, crop: int, stride: int
) -> torch.Tensor:
    """Average ``predict`` ([1, 3, h, w] -> [C, h, w]) over sliding windows of ``image`` [1, 3, H, W].

    ``crop <= 0`` predicts the whole image at once.
    """
    if crop <= 0:
        return predict(image)
    height, width = image.shape[-2:]
    total, count = None, image.new_zeros(height, width)
    for y0, x0, y1, x1 in sliding_windows(height, width, crop, stride or crop):
        pred = predict(image[..., y0:y1, x0:x1])
        if total is None:
            total = image.new_zeros(pred.shape[0], height, width)
        total[:, y0:y1, x0:x1] += pred
        count[y0:y1, x0:x1] += 1
    return total / count


def upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize [..., h, w] maps to ``size``."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(1, -1, *maps.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)
