"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), the refinement TCL and
the paper's test-time protocol apply to segmentation scores.

Each pixel's scores are replaced, ``num_iter`` times, by a weighted average of the scores of its
neighbours. The neighbours of pixel p are the 8 pixels around it in a 3x3 window dilated by d,
for every d in ``dilations`` (8 x len(dilations) neighbours; the image border is replicated).
The weights come from the image only and are fixed across iterations:

    a(p, q) = - mean_k |I_k(p) - I_k(q)| / (1e-8 + 0.1 * sigma_k(p))
    w(p, .) = softmax over the neighbours q of a(p, q)

with sigma_k(p) the (unbiased) standard deviation of channel k over the 9 x len(dilations)
pixels of the dilated windows around p, centre included (one centre per dilation). Dividing by
the local spread makes the affinity invariant to each channel's scale and offset, so normalised
and raw images give the same weights.

Eagerly each iteration materialises every neighbour of every score ([B, K, P, H, W]: 1 GB for
21 classes at 448 x 597) and reads it twice: 2.3 ms per iteration on an H200, about half of the
full protocol's kernel time. On CUDA the iteration therefore runs as one Triton kernel
(``pamr_kernel.py``) that reads the neighbours straight from the scores: 0.23 ms
(benchmarks/README.md), and the affinity of an RGB image as a second one (eagerly it stacks the
shifted image twice, about 130 small kernels). ``kernel`` chooses; "auto" (the default) takes
Triton on CUDA tensors when it is importable and the eager code elsewhere.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import pamr_kernel
from .kernel_choice import KERNELS, KernelChoice

__all__ = ["PAMR", "PAMR_KERNELS"]

# How an iteration runs (MODEL.SEG_INFERENCE.PAMR.KERNEL): "auto" = the Triton kernel on CUDA
# tensors when Triton is importable, else eager; "eager" (_refine_step); "triton" (pamr_kernel.py).
PAMR_KERNELS = KERNELS

# The 8 offsets (dy, dx) of a 3x3 window without its centre, in raster order.
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _refine_step(refined: torch.Tensor, weights: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """One PAMR iteration: [B, K, H, W] scores -> their neighbours' average under ``weights``
    [B, 1, P, H, W]."""
    return (_neighbours(refined, dilations, with_centre=False) * weights).sum(dim=2)


def _neighbours(x: torch.Tensor, dilations: Sequence[int], with_centre: bool) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, P, H, W]: each pixel's neighbours at every dilation (replicated
    border), P = (9 if ``with_centre`` else 8) x len(dilations). Shifted slices of a padded copy
    (not a convolution with one-hot kernels): the same values without a weight tensor."""
    height, width = x.shape[-2:]
    offsets = _OFFSETS + [(0, 0)] if with_centre else _OFFSETS
    out = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        out += [padded[..., d + dy * d: d + dy * d + height, d + dx * d: d + dx * d + width] for dy, dx in offsets]
    return torch.stack(out, dim=2)


class PAMR(nn.Module):
    """Pixel-adaptive mask refinement of score maps by the image's local colour affinities."""

    def __init__(self, num_iter: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
                 kernel: str = "auto"):
        """
        Args:
            num_iter: refinement steps (>= 1; the paper's protocol: 10).
            dilations: dilations of the 3x3 neighbourhoods, positive integers (paper: 1 2 4 8 12 24).
            kernel: how an iteration runs, one of ``PAMR_KERNELS`` (module docstring).
        """
        super().__init__()
        dilations = [int(d) for d in dilations]
        if int(num_iter) < 1 or not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"PAMR needs num_iter >= 1 and positive dilations, got {num_iter}, {dilations}")
        self.choice = KernelChoice(kernel, pamr_kernel.KEY)
        self.num_iter, self.dilations, self.kernel = int(num_iter), dilations, kernel
        self._offsets = {}  # device -> [P, 2] int32 neighbour offsets of the Triton kernel

    def _uses_triton(self, device: torch.device) -> bool:
        """Whether iterations on ``device`` run the Triton kernel."""
        return self.choice.uses_triton(device)

    def _offsets_on(self, device: torch.device) -> torch.Tensor:
        """[P, 2] int32 neighbour offsets of the Triton kernels, made once per device."""
        if device not in self._offsets:
            self._offsets[device] = torch.tensor(pamr_kernel.neighbour_offsets(self.dilations),
                                                 dtype=torch.int32, device=device)
        return self._offsets[device]

    def _step(self, refined: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One iteration by the configured kernel."""
        if self._uses_triton(refined.device):
            return pamr_kernel.refine_step_triton(refined, weights, self._offsets_on(refined.device))
        return _refine_step(refined, weights, self.dilations)

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """Neighbour weights [B, 1, P, H, W] (P = 8 x len(dilations), summing to 1 over P) of an
        image [B, 3, H, W] (any number of channels); one Triton kernel for RGB images where the
        iterations use Triton, else the definition's stacked neighbours."""
        if image.shape[1] == 3 and self._uses_triton(image.device):
            return pamr_kernel.affinity_triton(image, self._offsets_on(image.device), len(self.dilations))
        image = image.float()
        sigma = _neighbours(image, self.dilations, with_centre=True).std(dim=2, keepdim=True)
        diff = (_neighbours(image, self.dilations, with_centre=False) - image[:, :, None]).abs()
        logits = (-diff / (1e-8 + 0.1 * sigma)).mean(dim=1, keepdim=True)
        return logits.softmax(dim=2)

    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: [B, 3, H, W] the image the masks belong to (raw or normalised: same result).
            masks: [B, K, h, w] scores of K classes; resized bilinearly to (H, W) when h, w differ.
        Returns:
            [B, K, H, W] refined scores, in the dtype of ``masks``.
        """
        if image.dim() != 4 or masks.dim() != 4 or image.shape[0] != masks.shape[0]:
            raise ValueError(f"PAMR expects image [B, 3, H, W] and masks [B, K, h, w], got {tuple(image.shape)}, "
                             f"{tuple(masks.shape)}")
        dtype = masks.dtype
        refined = masks.float()
        if refined.shape[-2:] != image.shape[-2:]:
            refined = F.interpolate(refined, size=image.shape[-2:], mode="bilinear", align_corners=False)
        out = self.choice.run(refined.device, lambda: self._refine(image, refined),
                              lambda: self._refine(image, refined), "PAMR")  # eager once "auto" failed
        return out.to(dtype)

    def _refine(self, image: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
        """The affinity of ``image``, then ``num_iter`` iterations on float32 scores at its size."""
        weights = self.affinity(image)
        for _ in range(self.num_iter):
            refined = self._step(refined, weights)
        return refined
