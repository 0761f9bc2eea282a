"""The ViT's input embeddings as pure functions: the patch embedding and the positional
embedding resized to another patch grid."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["interpolate_pos_embed", "patch_embedding"]


def interpolate_pos_embed(pos_embed: torch.Tensor, src_grid: Tuple[int, int], dst_grid: Tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a ViT positional embedding [1 + H*W, C] from ``src_grid`` to ``dst_grid``."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    grid_pos = grid_pos.reshape(1, src_grid[0], src_grid[1], -1).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos.float(), size=dst_grid, mode="bicubic", align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(dst_grid[0] * dst_grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid_pos], dim=0)


def _is_patchify(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain non-overlapping patch convolution (kernel == stride, no
    padding, dilation or groups): the case :func:`patch_embedding` computes as one matmul."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == tuple(conv.stride)
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def patch_embedding(conv: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The ViT's patch embedding ``conv`` (open_clip's ``visual.conv1``) of images [B, 3, H, W]:
    tokens [B, h*w, C] in raster order and the grid (h, w) = (H // p, W // p), the rows and
    columns the convolution would drop included.

    A non-overlapping patch convolution is computed as one matrix product of the flattened
    patches [B*h*w, 3*p*p] with the kernel [C, 3*p*p]: the same sums (in another order). Why not
    the convolution: for bf16 inputs without ``cudnn.benchmark``, cuDNN picked a non-tensor-core
    implicit GEMM that took 0.8 ms for 32 windows of 448 x 448 and 3.3 ms for a TTD step's 64
    images on an H200 (benchmarks/README.md). Any other convolution runs as itself."""
    if not _is_patchify(conv):
        tokens = conv(x)
        return tokens.flatten(2).transpose(1, 2), tuple(tokens.shape[-2:])
    (ph, pw), (batch, channels, height, width) = conv.kernel_size, x.shape
    grid = (height // ph, width // pw)
    patches = x[..., : grid[0] * ph, : grid[1] * pw].reshape(batch, channels, grid[0], ph, grid[1], pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid[0] * grid[1], channels * ph * pw)
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias), grid
