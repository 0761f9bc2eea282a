"""Open-vocabulary semantic segmentation from dense CLIP features (inference helpers)."""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import ImageList


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


def max_over_synonyms(scores: torch.Tensor, owner: Optional[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Max-pool [S, ...] synonym scores into [num_classes, ...] class scores (along dim 0);
    ``owner`` [S] is each synonym's class, None when name s is class s (the scores as they are)."""
    if owner is None:
        return scores
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
    predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, crop: int, stride: int, batch_size: int = 0,
) -> torch.Tensor:
    """Average ``predict`` over sliding windows of ``images`` [B, 3, H, W] -> [B, C, H, W].

    ``predict`` maps a batch of windows [N, 3, h, w] to [N, C, h, w]. Every window of an image
    has the same size (min(crop, H) x min(crop, W), :func:`sliding_windows`), so the windows of
    all B images go through ``predict`` together, ``batch_size`` at a time (0 = all at once): a
    batch-1 forward per window leaves a GPU idle (benchmarks/README.md, ``bench_eval_protocol``).
    ``crop <= 0`` predicts the whole images at once.
    """
    if crop <= 0:
        return predict(images)
    num_images, _, height, width = images.shape
    windows = sliding_windows(height, width, crop, stride or crop)
    crops = _window_crops(images, windows)
    step = batch_size if batch_size > 0 else len(crops)
    count = images.new_zeros(height, width)
    for y0, x0, y1, x1 in windows:
        count[y0:y1, x0:x1] += 1
    # Each batch of predictions is added where it belongs as it comes (window-major, as the crops
    # are laid out; every pixel sums its windows in window order), instead of concatenating all
    # predictions first: at scale 2 that copy alone moved ~0.5 GB per image (bench_eval_protocol).
    total = None
    for start in range(0, len(crops), step):
        pred = predict(crops[start:start + step])
        if total is None:
            total = images.new_zeros(num_images, pred.shape[1], height, width)
        for offset, window_pred in enumerate(pred):
            window, image = divmod(start + offset, num_images)
            y0, x0, y1, x1 = windows[window]
            total[image, :, y0:y1, x0:x1] += window_pred
    return total / count


def window_maps(
    predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, crop: int, stride: int, batch_size: int = 0,
) -> Tuple[torch.Tensor, List[Tuple[int, int, int, int]]]:
    """What ``predict`` gives for every window of ``images`` [B, 3, H, W], nothing stitched yet:
    the input of the fused stitching (``stitch_kernel.py``), for which ``predict`` returns each
    window's maps at their own (low) resolution, [N, 3, h, w] -> [N, S, h', w'].

    Returns (maps [len(windows) * B, S, h', w'] window-major: window i of image b at i * B + b,
    as :func:`slide_inference` lays the crops out; the windows (y0, x0, y1, x1)). The windows
    go through ``predict`` ``batch_size`` at a time (0 = all at once); ``crop <= 0`` is one
    window, the whole images.
    """
    num_images, _, height, width = images.shape
    if crop <= 0:
        return predict(images), [(0, 0, height, width)]
    windows = sliding_windows(height, width, crop, stride or crop)
    crops = _window_crops(images, windows)
    step = batch_size if batch_size > 0 else len(crops)
    maps = [predict(crops[start:start + step]) for start in range(0, len(crops), step)]
    return (maps[0] if len(maps) == 1 else torch.cat(maps)), windows


def _window_crops(images: torch.Tensor, windows: Sequence[Tuple[int, int, int, int]]) -> torch.Tensor:
    """[len(windows) * B, 3, h, w]: the windows of images [B, 3, H, W], window-major."""
    return torch.cat([images[..., y0:y1, x0:x1] for y0, x0, y1, x1 in windows])


def upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize [..., h, w] maps to ``size``."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(1, -1, *maps.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def pad_to_patch_grid(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Normalised images [B, 3, H, W] padded at the bottom and right to multiples of ``patch``
    (detectron2's ``ImageList`` with ``size_divisibility``), so that the patch embedding sees
    every pixel instead of dropping the last H mod p rows and W mod p columns.

    The pad value is ImageList's 0, which after normalisation is the pixel-mean colour: a flat,
    neutral colour for the partly padded last patches (less than one patch of padding, so every
    patch still holds real pixels); reflecting would copy objects into them, black is further
    from anything the model saw. Images already on the grid are returned as they are.
    """
    if images.shape[-2] % patch == 0 and images.shape[-1] % patch == 0:
        return images
    return ImageList.from_tensors(list(images), size_divisibility=patch).tensor


def padded_size(image_size: Tuple[int, int], patch: int) -> Tuple[int, int]:
    """The (rows, columns) of an ``image_size`` image after :func:`pad_to_patch_grid`: what
    :func:`maps_to_image` needs, whatever the maps' resolution (TCL's are 4x the patch grid)."""
    return tuple(-(-int(n) // patch) * patch for n in image_size)


def maps_to_image(
    maps: torch.Tensor, padded_size: Tuple[int, int], image_size: Tuple[int, int],
    out_size: Optional[Tuple[int, int]] = None,
) -> torch.Tensor:
    """Maps [..., h, w] on the patch grid of an image padded to ``padded_size`` -> maps
    [..., *out_size] of the real image (``out_size`` defaults to ``image_size``): upsampled to
    the padded size, cropped to the image's ``image_size`` top-left corner, then resized.

    Without padding it is one resize straight to ``out_size``, as before padding existed.
    """
    image_size, out_size = tuple(image_size), tuple(out_size or image_size)
    if tuple(padded_size) == image_size:
        return upsample(maps, out_size)
    maps = upsample(maps, tuple(padded_size))[..., : image_size[0], : image_size[1]]
    return maps if out_size == image_size else upsample(maps, out_size)
