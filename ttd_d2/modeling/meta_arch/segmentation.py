"""Open-vocabulary semantic segmentation from dense CLIP features (inference helpers)."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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

    ``predict`` maps a batch of windows [N, 3, h, w] to full-resolution predictions [N, C, h, w].
    Every window of an image has the same size (min(crop, H) x min(crop, W), :func:`sliding_windows`),
    so the windows of all B images go through ``predict`` together, ``batch_size`` at a time
    (0 = all at once): a batch-1 forward per window leaves a GPU idle (benchmarks/README.md,
    ``bench_eval_protocol``). ``crop <= 0`` predicts the whole images at once. It is
    :func:`window_maps` then :func:`stitch_windows` with maps already at the windows' size; the
    model's protocol passes low-resolution maps to both instead (``TTDInference``), so this
    full-resolution form serves the tests and ``bench_stitch.py`` as the plain reference.
    """
    if crop <= 0:
        return predict(images)
    maps, windows = window_maps(predict, images, crop, stride, batch_size)
    return stitch_windows(maps, windows, len(images), tuple(images.shape[-2:]), 1, batch_size=batch_size)


def window_maps(
    predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, crop: int, stride: int, batch_size: int = 0,
) -> Tuple[torch.Tensor, List[Tuple[int, int, int, int]]]:
    """What ``predict`` gives for every window of ``images`` [B, 3, H, W], nothing stitched yet:
    the input of the stitching (:func:`stitch_windows`, ``stitch_kernel.py``), for which
    ``predict`` returns each window's maps at their own (low) resolution, [N, 3, h, w] -> [N, S, h', w'].

    Returns (maps [len(windows) * B, S, h', w'] window-major: window i of image b at i * B + b,
    as :func:`slide_inference` lays the crops out; the windows (y0, x0, y1, x1)). The windows
    go through ``predict`` ``batch_size`` at a time (0 = all at once); ``crop <= 0`` is one
    window, the whole images.
    """
    return window_maps_of_passes(predict, [images], crop, stride, batch_size)[0]


def window_maps_of_passes(
    predict: Callable[[torch.Tensor], torch.Tensor], passes: Sequence[torch.Tensor], crop: int, stride: int,
    batch_size: int = 0,
) -> List[Tuple[torch.Tensor, List[Tuple[int, int, int, int]]]]:
    """:func:`window_maps` of several image batches (the test-time protocol's scale passes, each
    [B_i, 3, H_i, W_i]), one (maps, windows) per pass, with the forwards shared: the windows of
    all passes that have one size (every crop x crop window of the scales larger than the crop)
    go through ``predict`` together, in pass order, ``batch_size`` at a time (0 = all of a size
    at once). Per pass the windows at scale 1, 1.5 and 2 of a 448 x 597 image are 4, 12 and 30
    (with flips): batches of 4 and 12 leave an H100 underused, one pool of 46 does not.
    """
    jobs = []
    for images in passes:
        height, width = images.shape[-2:]
        windows = [(0, 0, height, width)] if crop <= 0 else sliding_windows(height, width, crop, stride or crop)
        jobs.append((images, windows, (windows[0][2] - windows[0][0], windows[0][3] - windows[0][1])))
    by_size: Dict[Tuple[int, int], List[int]] = {}
    for index, (_, _, size) in enumerate(jobs):
        by_size.setdefault(size, []).append(index)
    maps: List[Optional[torch.Tensor]] = [None] * len(jobs)
    for members in by_size.values():
        # window-major per pass, the passes in order; one copy (none for a single whole image)
        pieces = [view for i in members for view in _window_views(*jobs[i][:2])]
        crops = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        step = batch_size if batch_size > 0 else len(crops)
        out = [predict(crops[start:start + step]) for start in range(0, len(crops), step)]
        out = out[0] if len(out) == 1 else torch.cat(out)
        counts = [len(jobs[i][1]) * len(jobs[i][0]) for i in members]
        for i, part in zip(members, out.split(counts)):
            maps[i] = part
    return [(m, windows) for m, (_, windows, _) in zip(maps, jobs)]


def stitch_windows(
    maps: torch.Tensor, windows: Sequence[Tuple[int, int, int, int]], num_images: int, image_size: Tuple[int, int],
    patch: int, window_scores: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, batch_size: int = 0,
) -> torch.Tensor:
    """The windows' low-resolution maps of :func:`window_maps` stitched eagerly into their
    images' scores [B, C, H, W] (float32): each window's maps [S, h', w'] brought to the window
    (:func:`maps_to_image` of the window padded to the ``patch`` grid), ``window_scores``
    applied ([N, S, h, w] -> [N, C, h, w]: the masker and the synonym maximum; None = the maps),
    added where the window lies (window-major, so every pixel sums its windows in window order),
    and each pixel divided by its number of windows, ``batch_size`` windows at a time (0 = all at
    once): the full-resolution maps of one batch exist at a time, not all windows' (at scale 2
    of the paper's protocol, about 0.5 GB per image). The reference of the fused kernel
    (``stitch_kernel.stitch_windows_triton``)."""
    height, width = image_size
    y0, x0, y1, x1 = windows[0]
    window_size = (y1 - y0, x1 - x0)
    padded = padded_size(window_size, patch)
    count = maps.new_zeros(height, width, dtype=torch.float32)
    for y0, x0, y1, x1 in windows:
        count[y0:y1, x0:x1] += 1
    step = batch_size if batch_size > 0 else len(maps)
    total = None
    for start in range(0, len(maps), step):
        pred = maps_to_image(maps[start:start + step].float(), padded, window_size)
        pred = window_scores(pred) if window_scores is not None else pred
        if total is None:
            total = pred.new_zeros(num_images, pred.shape[1], height, width)
        for offset, window_pred in enumerate(pred):
            window, image = divmod(start + offset, num_images)
            y0, x0, y1, x1 = windows[window]
            total[image, :, y0:y1, x0:x1] += window_pred
    return total / count


def _window_views(images: torch.Tensor, windows: Sequence[Tuple[int, int, int, int]]) -> List[torch.Tensor]:
    """Views [B, 3, h, w] of images [B, 3, H, W], one per window, in window order (concatenated:
    window i of image b at i * B + b)."""
    return [images[..., y0:y1, x0:x1] for y0, x0, y1, x1 in windows]


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
