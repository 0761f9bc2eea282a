"""Training-free dense heads: each replaces only the last ViT block (docs/METHOD.md, "Dense
backbones"). ``x`` is the input of the last block, q, k, v its projections of LN1(x), W_o the
output projection. All functions take and return token tensors [B, 1 + h*w, C]."""
import math
from typing import Tuple

import torch

from ..lora.side_branch import lora_linear

DENSE_MODES = ("vanilla", "maskclip", "sclip", "clearclip", "naclip")
# Heads whose last block skips its residual and MLP (ln_2, mlp, ls_2 get no gradient).
HEADS_WITHOUT_LAST_MLP = ("clearclip", "naclip")


def split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C / heads]."""
    b, n, c = t.shape
    return t.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> [B, N, heads * d]."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def qkv_projections(block, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, heads, N, d] of ``block.ln_1(x)`` through the block's attention weights."""
    attn = block.attn
    qkv = lora_linear(attn, "in_proj_weight", block.ln_1(x), attn.in_proj_bias)  # LoRA as a side branch
    return tuple(split_heads(t, attn.num_heads) for t in qkv.chunk(3, dim=-1))


def gaussian_grid_bias(grid_hw: Tuple[int, int], sigma: float, device=None) -> torch.Tensor:
    """NACLIP's neighbourhood prior: [1 + h*w, 1 + h*w] with exp(-d^2 / 2 sigma^2) between
    patches p, q at grid distance d, and 0 for every pair involving the CLS token."""
    h, w = grid_hw
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    dist2 = torch.cdist(pos, pos).pow(2)
    bias = torch.zeros(1 + h * w, 1 + h * w, device=device)
    bias[1:, 1:] = torch.exp(-dist2 / (2 * sigma**2))
    return bias


def _attend(logits: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return merge_heads(logits.softmax(dim=-1) @ v)


def out_projection(block, attn_out: torch.Tensor) -> torch.Tensor:
    """The attention's output projection W_o of ``attn_out`` [B, N, C] (LoRA as a side branch)."""
    out_proj = block.attn.out_proj
    return lora_linear(out_proj, "weight", attn_out, out_proj.bias)


def _residual_ffn(block, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    y = x + block.ls_1(out_projection(block, attn_out))
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def dense_last_block(
    block, x: torch.Tensor, mode: str, grid_hw: Tuple[int, int], attn_scale: float = 0.0, naclip_sigma: float = 5.0
) -> torch.Tensor:
    """Run ``block`` (an open_clip ResidualAttentionBlock) on ``x`` [B, 1 + h*w, C] as the
    dense head ``mode`` and return the block output [B, 1 + h*w, C].

    ``attn_scale`` is the temperature s of the self-self attentions (0 = 1/sqrt(head_dim)).
    """
    q, k, v = qkv_projections(block, x)
    s = attn_scale or 1.0 / math.sqrt(q.shape[-1])
    if mode == "vanilla":
        return _residual_ffn(block, x, _attend(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), v))
    if mode == "maskclip":
        return _residual_ffn(block, x, merge_heads(v))
    if mode == "sclip":
        attn = (q @ q.transpose(-1, -2) * s).softmax(-1) + (k @ k.transpose(-1, -2) * s).softmax(-1)
        return _residual_ffn(block, x, merge_heads(attn @ v))
    if mode == "clearclip":
        return block.ls_1(out_projection(block, _attend(q @ q.transpose(-1, -2) * s, v)))
    if mode == "naclip":
        bias = gaussian_grid_bias(grid_hw, naclip_sigma, device=x.device).to(q.dtype)
        return block.ls_1(out_projection(block, _attend(k @ k.transpose(-1, -2) * s + bias, v)))
    raise ValueError(f"MODEL.CLIP.DENSE_MODE '{mode}' unknown; choose one of {DENSE_MODES}")
