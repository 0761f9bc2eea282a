"""PAMR's iteration as one Triton kernel (``MODEL.SEG_INFERENCE.PAMR.KERNEL triton``).

Why hand-written: an iteration reads each score's 8 x len(dilations) neighbours and averages
them under per-pixel weights. Eagerly (``pamr._refine_step``) the neighbours are first written
out as a [B, K, P, H, W] stack (1 GB for 21 classes at 448 x 597) and read back; torch.compile
of the same step either wrote that stack too or, written as a sum of shifted copies, produced a
kernel three times slower than eager on an H200 (benchmarks/README.md). No library offers the
operation. This kernel reads the neighbours straight from the scores (they stay in L1/L2: at
most 2 x 24 + 1 rows of one class plane) and writes only the result, so an iteration costs one
read of the weights and the scores and one write.

Layout: one program per block of ``BLOCK_PIXELS`` pixels of one image and ``BLOCK_CLASSES``
classes; each neighbour's weight is loaded once per program and applied to its classes (256 x 2
was the fastest of the shapes timed on an H200, 0.23 ms per iteration at 21 x 448 x 597:
benchmarks/README.md). The class blocks of one pixel block are consecutive programs, so they
read that block's neighbour weights while they are in L2 (on an H100: 0.212 ms per iteration
against 0.237 with the pixel blocks fastest, 1.51 against 1.76 ms at 171 classes; exact, the
same sums; benchmarks/README.md).
Borders are replicated (indices clamped), as in ``pamr._neighbours``. Summation runs over the
neighbours in their order in ``pamr._neighbours``: fp32 results equal the eager step's up to
rounding.

Triton is optional (``kernel_choice``); on CPU tensors the kernels run only in its interpreter.
"""
from typing import Sequence, Tuple

import torch

from . import kernel_choice
from .kernel_choice import tl, triton

__all__ = ["affinity_triton", "neighbour_offsets", "refine_step_triton"]

KEY = "MODEL.SEG_INFERENCE.PAMR.KERNEL"

BLOCK_PIXELS = 256
BLOCK_CLASSES = 2
CLASS_BLOCKS_FASTEST = True  # grid order of the iteration (benchmarks/bench_pamr.py times both)


def neighbour_offsets(dilations: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    """The (dy, dx) offset of every neighbour, in the order of ``pamr._neighbours`` (per
    dilation, the 3x3 window without its centre in raster order)."""
    return tuple((dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _neighbour_index(offsets_ptr, n, row, col, height, width):
    """Flat index in a plane of neighbour ``n`` (offset ``offsets[n]``) of each pixel (row, col),
    the border replicated (indices clamped, as ``pamr._neighbours`` pads)."""
    dy, dx = tl.load(offsets_ptr + 2 * n), tl.load(offsets_ptr + 2 * n + 1)
    return tl.minimum(tl.maximum(row + dy, 0), height - 1) * width + tl.minimum(tl.maximum(col + dx, 0), width - 1)


def _refine_step_kernel(scores_ptr, weights_ptr, offsets_ptr, out_ptr, num_classes, height, width,
                        num_neighbours, BLOCK_PIXELS: tl.constexpr, BLOCK_CLASSES: tl.constexpr,
                        CLASS_BLOCKS_FASTEST: tl.constexpr):
    """out[b, k, p] = sum_n weights[b, n, p] * scores[b, k, clamp(p + offset_n)] for one block of
    pixels p and classes k of image b (grid: class blocks, pixel blocks, images; or pixel blocks
    first)."""
    if CLASS_BLOCKS_FASTEST:
        class_block, pixel_block = tl.program_id(0), tl.program_id(1)
    else:
        pixel_block, class_block = tl.program_id(0), tl.program_id(1)
    image = tl.program_id(2)
    plane = height * width
    pixels = pixel_block * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    classes = class_block * BLOCK_CLASSES + tl.arange(0, BLOCK_CLASSES)
    pixel_ok, class_ok = pixels < plane, classes < num_classes
    row, col = pixels // width, pixels % width
    image_scores = scores_ptr + image.to(tl.int64) * num_classes * plane
    class_rows = classes.to(tl.int64)[:, None] * plane
    load_ok = class_ok[:, None] & pixel_ok[None, :]
    weight_rows = weights_ptr + image.to(tl.int64) * num_neighbours * plane
    total = tl.zeros((BLOCK_CLASSES, BLOCK_PIXELS), dtype=tl.float32)
    for n in range(num_neighbours):
        weight = tl.load(weight_rows + n * plane + pixels, mask=pixel_ok, other=0.0)
        source = _neighbour_index(offsets_ptr, n, row, col, height, width)
        neighbour = tl.load(image_scores + class_rows + source[None, :], mask=load_ok, other=0.0)
        total += neighbour * weight[None, :]
    out = out_ptr + image.to(tl.int64) * num_classes * plane + class_rows + pixels[None, :]
    tl.store(out, total, mask=load_ok)


def _neighbour_value(channel_ptr, offsets_ptr, n, row, col, height, width, pixel_ok):
    """One channel's value at neighbour ``n`` of each pixel (replicated border), [BLOCK_PIXELS]."""
    return tl.load(channel_ptr + _neighbour_index(offsets_ptr, n, row, col, height, width), mask=pixel_ok, other=0.0)


def _centre_and_scale(channel_ptr, offsets_ptr, pixels, row, col, height, width, pixel_ok, num_neighbours,
                      num_dilations):
    """A channel's value at each pixel and 1 / (3 (1e-8 + 0.1 sigma)), sigma the unbiased standard
    deviation over the neighbours and one copy of the pixel per dilation (two passes: no
    E[x^2] - E[x]^2 cancellation)."""
    count = (num_neighbours + num_dilations).to(tl.float32)
    value = tl.load(channel_ptr + pixels, mask=pixel_ok, other=0.0)
    total = value * num_dilations
    for n in range(num_neighbours):
        total += _neighbour_value(channel_ptr, offsets_ptr, n, row, col, height, width, pixel_ok)
    mean = total / count
    squares = (value - mean) * (value - mean) * num_dilations
    for n in range(num_neighbours):
        delta = _neighbour_value(channel_ptr, offsets_ptr, n, row, col, height, width, pixel_ok) - mean
        squares += delta * delta
    return value, 1.0 / (3.0 * (1e-8 + 0.1 * tl.sqrt(squares / (count - 1.0))))


def _affinity_kernel(image_ptr, offsets_ptr, out_ptr, height, width, num_neighbours, num_dilations,
                     BLOCK_PIXELS: tl.constexpr):
    """out[b, n, p] = softmax over n of -mean_c |I_c(p) - I_c(q_n)| / (1e-8 + 0.1 sigma_c(p)) for
    one block of pixels of RGB image b (``PAMR.affinity``; grid: pixel blocks, images); the
    softmax is online (running maximum and sum), then a second pass writes the weights."""
    pixel_block, image = tl.program_id(0), tl.program_id(1)
    plane = height * width
    pixels = pixel_block * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    pixel_ok = pixels < plane
    row, col = pixels // width, pixels % width
    red = image_ptr + image.to(tl.int64) * 3 * plane
    green, blue = red + plane, red + 2 * plane
    r, r_scale = _centre_and_scale(red, offsets_ptr, pixels, row, col, height, width, pixel_ok, num_neighbours, num_dilations)
    g, g_scale = _centre_and_scale(green, offsets_ptr, pixels, row, col, height, width, pixel_ok, num_neighbours,
                                   num_dilations)
    b, b_scale = _centre_and_scale(blue, offsets_ptr, pixels, row, col, height, width, pixel_ok, num_neighbours,
                                   num_dilations)
    running_max = tl.full((BLOCK_PIXELS,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_PIXELS,), dtype=tl.float32)
    for n in range(num_neighbours):
        logit = -(tl.abs(r - _neighbour_value(red, offsets_ptr, n, row, col, height, width, pixel_ok)) * r_scale
                  + tl.abs(g - _neighbour_value(green, offsets_ptr, n, row, col, height, width, pixel_ok)) * g_scale
                  + tl.abs(b - _neighbour_value(blue, offsets_ptr, n, row, col, height, width, pixel_ok)) * b_scale)
        new_max = tl.maximum(running_max, logit)
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.exp(logit - new_max)
        running_max = new_max
    out = out_ptr + image.to(tl.int64) * num_neighbours * plane + pixels
    for n in range(num_neighbours):
        logit = -(tl.abs(r - _neighbour_value(red, offsets_ptr, n, row, col, height, width, pixel_ok)) * r_scale
                  + tl.abs(g - _neighbour_value(green, offsets_ptr, n, row, col, height, width, pixel_ok)) * g_scale
                  + tl.abs(b - _neighbour_value(blue, offsets_ptr, n, row, col, height, width, pixel_ok)) * b_scale)
        tl.store(out + n * plane, tl.exp(logit - running_max) / running_sum, mask=pixel_ok)


if triton is not None:  # TRITON_INTERPRET=1 (set before Triton is imported) makes them interpreted
    _neighbour_index = triton.jit(_neighbour_index)
    _refine_step_kernel = triton.jit(_refine_step_kernel)
    _neighbour_value = triton.jit(_neighbour_value)
    _centre_and_scale = triton.jit(_centre_and_scale)
    _affinity_kernel = triton.jit(_affinity_kernel)


def refine_step_triton(scores: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """One PAMR iteration (``pamr._refine_step``) in one kernel.

    Args:
        scores: [B, K, H, W] float32 scores.
        weights: [B, 1, P, H, W] (or [B, P, H, W]) float32 neighbour weights (``PAMR.affinity``).
        offsets: [P, 2] int32 (dy, dx) of the neighbours (:func:`neighbour_offsets`), on the
            scores' device.
    Returns:
        [B, K, H, W] float32: each score replaced by its neighbours' weighted sum.
    """
    kernel_choice.check_runnable(scores, KEY)
    batch, num_classes, height, width = scores.shape
    weights = weights.reshape(batch, -1, height, width)
    if scores.dtype != torch.float32 or weights.dtype != torch.float32:
        raise TypeError(f"refine_step_triton takes float32 scores and weights, got {scores.dtype}, {weights.dtype}")
    if offsets.shape != (weights.shape[1], 2):
        raise ValueError(f"offsets {tuple(offsets.shape)} do not match {weights.shape[1]} neighbour weights")
    scores, weights, offsets = scores.contiguous(), weights.contiguous(), offsets.to(torch.int32).contiguous()
    out = torch.empty_like(scores)
    class_blocks, pixel_blocks = triton.cdiv(num_classes, BLOCK_CLASSES), triton.cdiv(height * width, BLOCK_PIXELS)
    grid = (class_blocks, pixel_blocks, batch) if CLASS_BLOCKS_FASTEST else (pixel_blocks, class_blocks, batch)
    _refine_step_kernel[grid](
        scores, weights, offsets, out, num_classes, height, width, weights.shape[1],
        BLOCK_PIXELS=BLOCK_PIXELS, BLOCK_CLASSES=BLOCK_CLASSES, CLASS_BLOCKS_FASTEST=CLASS_BLOCKS_FASTEST)
    return out


def affinity_triton(image: torch.Tensor, offsets: torch.Tensor, num_dilations: int) -> torch.Tensor:
    """``PAMR.affinity`` in one kernel: neighbour weights [B, 1, P, H, W] of an RGB image
    [B, 3, H, W] (cast to float32), ``offsets`` [P, 2] int32 (:func:`neighbour_offsets` of ``num_dilations``
    dilations) on the image's device. Eagerly the affinity stacks 9 x len(dilations) shifted
    copies of the image twice (about 130 small kernels per image); here one kernel reads them."""
    kernel_choice.check_runnable(image, KEY)
    batch, channels, height, width = image.shape
    if channels != 3:
        raise ValueError(f"affinity_triton takes RGB images [B, 3, H, W], got {tuple(image.shape)}")
    image, offsets = image.float().contiguous(), offsets.to(torch.int32).contiguous()
    if offsets.shape != (8 * num_dilations, 2):
        raise ValueError(f"offsets {tuple(offsets.shape)} are not those of {num_dilations} dilations")
    out = torch.empty(batch, offsets.shape[0], height, width, device=image.device, dtype=torch.float32)
    grid = (triton.cdiv(height * width, BLOCK_PIXELS), batch)
    _affinity_kernel[grid](image, offsets, out, height, width, offsets.shape[0], num_dilations,
                           BLOCK_PIXELS=BLOCK_PIXELS)
    return out[:, None]
