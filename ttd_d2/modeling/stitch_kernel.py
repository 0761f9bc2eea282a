"""Sliding-window stitching as one Triton kernel (``MODEL.SEG_INFERENCE.STITCH_KERNEL``).

Why hand-written: eagerly (``segmentation.stitch_windows``) every window's low-resolution maps
are upsampled to the window, turned into masker probabilities and max-pooled over synonyms at
full resolution, then added into the image's sums and divided by the window count: four to six
full-resolution passes per window over [names, 448, 448] float32, about 4.5 ms of the paper
protocol's 27 ms of kernels per image on an H200 (48 windows; benchmarks/README.md). No library
fuses an upsampling with what follows it. This kernel computes each output pixel from the
windows that cover it: four bilinear taps of each window's low-resolution map (a few kB per
plane, so cache hits), the masker, the synonym maximum, the sum in window order and the
division by the count, and writes the result once. A program takes ``BLOCK_PIXELS`` pixels
and ``BLOCK_CLASSES`` classes, so that the taps' indices and weights serve four classes (128 x 4
was the fastest shape timed on an H200: 0.74 ms for the scale-2 pass against 2.44 eagerly,
benchmarks/README.md).

It follows the eager code step by step, so float32 results equal it up to rounding: PyTorch's
bilinear source index (``align_corners=False``: ``scale * (dst + 0.5) - 0.5``, clamped at 0,
with ``scale = in / out`` over the window's padded size), the masker ``sigmoid(w x + b)``, the
maximum over the contiguous synonyms of a class (``split_synonyms`` lists a class's names
together), windows summed in their order.

Triton is optional (``kernel_choice``); on CPU tensors the kernel runs only in its interpreter.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch

from . import kernel_choice
from .kernel_choice import tl, triton

__all__ = ["BLOCK_CLASSES", "BLOCK_PIXELS", "KEY", "stitch_windows_triton", "synonym_layout"]

KEY = "MODEL.SEG_INFERENCE.STITCH_KERNEL"

BLOCK_PIXELS = 128
BLOCK_CLASSES = 4


def _stitch_kernel(maps_ptr, corners_ptr, starts_ptr, masker_ptr, out_ptr, num_images, num_windows, num_names,
                   num_classes, max_names, height, width, grid_h, grid_w, window_h, window_w, scale_h, scale_w,
                   APPLY_MASKER: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CLASSES: tl.constexpr):
    """out[b, c, p] = mean over the windows w covering p of max over the names s of class c of
    masker(bilinear(maps[w * B + b, s])(p - corner_w)), for one block of pixels p and classes c
    of image b (grid: pixel blocks, class blocks, images); a class has at most ``max_names``."""
    pixel_block, class_block, image = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    plane = height * width
    pixels = pixel_block * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    pixel_ok = pixels < plane
    row, col = pixels // width, pixels % width
    classes = class_block * BLOCK_CLASSES + tl.arange(0, BLOCK_CLASSES)
    class_ok = classes < num_classes
    first = tl.load(starts_ptr + classes, mask=class_ok, other=0)
    last = tl.load(starts_ptr + classes + 1, mask=class_ok, other=0)  # first == last: no names, never stored
    masker_w, masker_b = tl.load(masker_ptr).to(tl.float32), tl.load(masker_ptr + 1).to(tl.float32)  # read if APPLY_MASKER
    # the block's bounding box: windows that miss it are skipped whole (at scale 2 of the paper's
    # protocol a block meets 4-8 of 15 windows; masked lanes would still issue every instruction)
    last_pixel = tl.minimum(pixel_block * BLOCK_PIXELS + BLOCK_PIXELS, plane) - 1
    row_lo, row_hi = (pixel_block * BLOCK_PIXELS) // width, last_pixel // width
    one_row = row_lo == row_hi
    col_lo = tl.where(one_row, (pixel_block * BLOCK_PIXELS) % width, 0)
    col_hi = tl.where(one_row, last_pixel % width, width - 1)
    total = tl.zeros((BLOCK_CLASSES, BLOCK_PIXELS), dtype=tl.float32)
    count = tl.zeros((BLOCK_PIXELS,), dtype=tl.float32)
    for window in range(num_windows):
        corner_y, corner_x = tl.load(corners_ptr + 2 * window), tl.load(corners_ptr + 2 * window + 1)
        if (corner_y <= row_hi) & (corner_y + window_h > row_lo) & (corner_x <= col_hi) & (corner_x + window_w > col_lo):
            total, count = _add_window(maps_ptr, total, count, row - corner_y, col - corner_x, pixel_ok,
                                       window * num_images + image, first, last, max_names, num_names, grid_h,
                                       grid_w, window_h, window_w, scale_h, scale_w, masker_w, masker_b, APPLY_MASKER)
    out = out_ptr + (image * num_classes + classes).to(tl.int64)[:, None] * plane + pixels[None, :]
    tl.store(out, total / count[None, :], mask=class_ok[:, None] & pixel_ok[None, :])


def _add_window(maps_ptr, total, count, local_y, local_x, pixel_ok, window_row, first, last, max_names, num_names,
                grid_h, grid_w, window_h, window_w, scale_h, scale_w, masker_w, masker_b, APPLY_MASKER: tl.constexpr):
    """(total [classes, pixels], count [pixels]) plus one window's pooled scores where it covers
    the pixels (window-local coordinates ``local_y``, ``local_x``; its maps are row
    ``window_row`` of ``maps``; class c's names are first[c]:last[c])."""
    grid_plane = grid_h * grid_w
    inside = pixel_ok & (local_y >= 0) & (local_y < window_h) & (local_x >= 0) & (local_x < window_w)
    source_y = tl.maximum(scale_h * (local_y.to(tl.float32) + 0.5) - 0.5, 0.0)
    source_x = tl.maximum(scale_w * (local_x.to(tl.float32) + 0.5) - 0.5, 0.0)
    y0, x0 = source_y.to(tl.int32), source_x.to(tl.int32)  # truncation = floor: sources are >= 0
    y1 = y0 + tl.where(y0 < grid_h - 1, 1, 0)
    x1 = x0 + tl.where(x0 < grid_w - 1, 1, 0)
    lambda_y1, lambda_x1 = source_y - y0.to(tl.float32), source_x - x0.to(tl.float32)
    lambda_y0, lambda_x0 = (1.0 - lambda_y1)[None, :], (1.0 - lambda_x1)[None, :]
    lambda_y1, lambda_x1 = lambda_y1[None, :], lambda_x1[None, :]
    tap00, tap01 = (y0 * grid_w + x0)[None, :], (y0 * grid_w + x1)[None, :]
    tap10, tap11 = (y1 * grid_w + x0)[None, :], (y1 * grid_w + x1)[None, :]
    planes = maps_ptr + window_row.to(tl.int64) * num_names * grid_plane
    pooled = tl.full(total.shape, float("-inf"), tl.float32)
    for rank in range(max_names):  # the rank-th name of every class (synonyms)
        names = first + rank
        named = names < last
        ok = named[:, None] & inside[None, :]
        rows = planes + names[:, None] * grid_plane
        v00 = tl.load(rows + tap00, mask=ok, other=0.0).to(tl.float32)
        v01 = tl.load(rows + tap01, mask=ok, other=0.0).to(tl.float32)
        v10 = tl.load(rows + tap10, mask=ok, other=0.0).to(tl.float32)
        v11 = tl.load(rows + tap11, mask=ok, other=0.0).to(tl.float32)
        value = lambda_y0 * (lambda_x0 * v00 + lambda_x1 * v01) + lambda_y1 * (lambda_x0 * v10 + lambda_x1 * v11)
        if APPLY_MASKER:
            value = 1.0 / (1.0 + tl.exp(-(masker_w * value + masker_b)))
        pooled = tl.where(named[:, None], tl.maximum(pooled, value), pooled)
    total += tl.where(inside[None, :], pooled, 0.0)
    count += tl.where(inside, 1.0, 0.0)
    return total, count


if triton is not None:  # TRITON_INTERPRET=1 (set before Triton is imported) makes it interpreted
    _add_window = triton.jit(_add_window)
    _stitch_kernel = triton.jit(_stitch_kernel)


_NO_MASKER: Dict[str, torch.Tensor] = {}  # device -> a [2] placeholder for the masker's (w, b)
_CORNERS: Dict[Tuple, torch.Tensor] = {}  # (corners, device) -> [2 * windows] int32, reused across passes


def _corner_tensor(corners: Tuple[Tuple[int, int], ...], device: torch.device) -> torch.Tensor:
    """The window corners on ``device``, made once per window layout: a fresh host-to-device copy of
    pageable memory at every pass would block the host (the syncs ``bench_eval_protocol`` counts)."""
    key = (corners, str(device))
    if key not in _CORNERS:
        if len(_CORNERS) >= 256:  # image sizes vary across a dataset: keep the cache bounded
            _CORNERS.clear()
        _CORNERS[key] = torch.tensor([c for yx in corners for c in yx], dtype=torch.int32, device=device)
    return _CORNERS[key]


def synonym_layout(owner: Optional[torch.Tensor], num_names: int, num_classes: int,
                   device: torch.device) -> Tuple[torch.Tensor, int]:
    """(starts [C + 1] int32 on ``device``, the most names of any class): class c's names are
    ``starts[c]:starts[c + 1]`` of the maps' channels. ``owner`` [S] is each name's class in
    non-decreasing order (``split_synonyms``), None when name s is class s. Reads ``owner`` on
    the host (once per class list: callers keep the result)."""
    if owner is None:
        return torch.arange(num_names + 1, device=device, dtype=torch.int32), 1
    owner = owner.cpu()
    if owner.numel() != num_names or (owner[1:] < owner[:-1]).any():
        raise ValueError(f"owner must list {num_names} names' classes in non-decreasing order (split_synonyms)")
    counts = torch.bincount(owner, minlength=num_classes)
    starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(device=device, dtype=torch.int32)
    return starts, int(counts.max())


def stitch_windows_triton(
    maps: torch.Tensor, corners: Sequence[Tuple[int, int]], num_images: int, image_size: Tuple[int, int],
    window_size: Tuple[int, int], padded_window_size: Tuple[int, int], layout: Tuple[torch.Tensor, int],
    masker: Optional[torch.Tensor] = None, block_pixels: int = BLOCK_PIXELS, block_classes: int = BLOCK_CLASSES,
) -> torch.Tensor:
    """Every window's maps stitched into its image's scores, in one kernel.

    Args:
        maps: [len(corners) * B, S, h, w] the windows' maps on their (padded) patch grid,
            window-major (window i of image b at i * B + b, as ``window_maps`` lays them out).
        corners: (y0, x0) of each window in the image.
        num_images: B.
        image_size: (H, W) of the images.
        window_size: (h_win, w_win) of every window (``sliding_windows``: all the same).
        padded_window_size: the window padded to the patch grid, the size the maps describe
            (``padded_size``); the maps are upsampled to it and cropped to the window.
        layout: the classes' names (:func:`synonym_layout`, on the maps' device).
        masker: [2] float32 (w, b) on the maps' device to apply ``sigmoid(w x + b)`` before the
            synonym maximum; None keeps the upsampled maps (then ``layout`` must be one name per class).
        block_pixels, block_classes: pixels and classes per program, powers of 2
            (benchmarks/bench_stitch.py times them).
    Returns:
        [B, C, H, W] float32: each pixel's mean over the windows that cover it.
    """
    kernel_choice.check_runnable(maps, KEY)
    if maps.dim() != 4 or maps.shape[0] != len(corners) * num_images:
        raise ValueError(f"maps {tuple(maps.shape)} are not {len(corners)} windows x {num_images} images of [S, h, w]")
    num_names, grid_h, grid_w = maps.shape[1:]
    starts, max_names = layout
    num_classes = starts.numel() - 1
    height, width = image_size
    maps = maps.contiguous()
    corner_tensor = _corner_tensor(tuple(tuple(int(v) for v in yx) for yx in corners), maps.device)
    out = torch.empty(num_images, num_classes, height, width, device=maps.device, dtype=torch.float32)
    masker_arg = masker.float().contiguous() if masker is not None else _NO_MASKER.setdefault(
        str(maps.device), torch.zeros(2, device=maps.device))  # loaded, unused without the masker
    grid = (triton.cdiv(height * width, block_pixels), triton.cdiv(num_classes, block_classes), num_images)
    _stitch_kernel[grid](
        maps, corner_tensor, starts, masker_arg, out, num_images, len(corners), num_names, num_classes, max_names,
        height, width, grid_h, grid_w, window_size[0], window_size[1], grid_h / padded_window_size[0],
        grid_w / padded_window_size[1], APPLY_MASKER=masker is not None, BLOCK_PIXELS=block_pixels,
        BLOCK_CLASSES=block_classes)
    return out
