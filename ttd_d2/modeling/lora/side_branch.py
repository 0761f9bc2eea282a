"""Parametrized attention weights used as side branches: ``x W^T + b + s (x A^T) B^T``.

An attention projection with a LoRA parametrization (:class:`~.layers.LoRAParametrization`)
read as a tensor is the adapted weight ``W + s B A`` [out, in], and the backward then forms the
full-size gradient of that weight (``g^T x``, as large as a full fine-tune's) only to reduce it
to ``A`` and ``B``. :func:`lora_linear` computes the same projection as the frozen ``W`` plus the
low-rank branch, as :class:`~.layers.LoRALinear` does for the MLP, so the backward forms no
gradient of ``W`` (frozen) and only the small ones of ``A`` and ``B``. It honours ``enabled`` and
``delta_override`` (frozen and EMA teachers) exactly as the parametrization does.

The parametrization stays where it is (state-dict names, LoRA files, merging, the EMA are
unchanged); only the readers change: the dense heads (``dense_heads.py``) and the towers'
blocks, whose ``attention`` :func:`use_side_branches` replaces by :func:`self_attention`
(``nn.MultiheadAttention`` reads the raw weights inside ``F.multi_head_attention_forward``).
``CLIPDense`` does that to every block, adapted or not (:func:`use_batch_first_attention`):
the batch-first attention also avoids the sequence-first layout of ``nn.MultiheadAttention``'s
autocast path (see :func:`_block_attention`).
"""
import types
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .layers import LoRAParametrization, low_rank_linear

__all__ = ["lora_linear", "self_attention", "use_batch_first_attention", "use_side_branches"]


def _lora_of(module: nn.Module, name: str) -> Optional[LoRAParametrization]:
    if not parametrize.is_parametrized(module, name):
        return None
    plist = module.parametrizations[name]
    return plist[0] if len(plist) == 1 and isinstance(plist[0], LoRAParametrization) else None


def lora_linear(module: nn.Module, name: str, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, getattr(module, name), bias)`` [..., out], with a LoRA parametrization of
    ``module.<name>`` computed as a side branch (any other weight: read as it is)."""
    lora = _lora_of(module, name)
    if lora is None:
        return F.linear(x, getattr(module, name), bias)
    weight = module.parametrizations[name].original
    return low_rank_linear(x, weight, bias, lora) if lora.enabled else F.linear(x, weight, bias)


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``attn(x, x, x, need_weights=False, attn_mask=attn_mask)[0]`` with its projections through
    :func:`lora_linear`: x [B, N, C] (``batch_first``) or [N, B, C]; ``attn_mask`` None, or
    [N, N] additive (float) or boolean (True = masked), as ``nn.MultiheadAttention`` takes it."""
    if attn_mask is not None and attn_mask.dim() != 2:
        return attn(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
    tokens = x if attn.batch_first else x.transpose(0, 1)
    b, n, c = tokens.shape
    qkv = lora_linear(attn, "in_proj_weight", tokens, attn.in_proj_bias)
    q, k, v = (t.view(b, n, attn.num_heads, c // attn.num_heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = ~attn_mask  # scaled_dot_product_attention's booleans mark the allowed pairs
    elif attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                         dropout_p=attn.dropout if attn.training else 0.0)
    out = lora_linear(attn.out_proj, "weight", out.transpose(1, 2).reshape(b, n, c), attn.out_proj.bias)
    return out if attn.batch_first else out.transpose(0, 1)


def _block_attention(block, q_x, k_x=None, v_x=None, attn_mask=None):
    """open_clip ``ResidualAttentionBlock.attention`` through :func:`self_attention`, adapters on
    or off (off: plain ``F.linear`` of the frozen weights, the base model's values); open_clip's
    own for cross-attention. Why for plain blocks too: under autocast ``nn.MultiheadAttention``
    leaves its fast path and runs ``F.multi_head_attention_forward``, which works sequence-first:
    it transposes its input, makes q/k/v and the attention output contiguous in that layout and
    returns a transposed view, so every residual add and layer norm after it reads a strided
    tensor (benchmarks/README.md: the test-time protocol's non-vectorised adds and copies)."""
    if (k_x is not None and k_x is not q_x) or (v_x is not None and v_x is not q_x):
        return type(block).attention(block, q_x, k_x, v_x, attn_mask)
    return self_attention(block.attn, q_x, attn_mask.to(q_x.dtype) if attn_mask is not None else None)


def use_side_branches(block: nn.Module) -> None:
    """Make ``block`` (an open_clip ``ResidualAttentionBlock``) run its attention through
    :func:`self_attention` (an instance attribute shadowing the class's ``attention``). Every
    tower block of ``CLIPDense`` gets it at construction, adapted or not."""
    block.attention = types.MethodType(_block_attention, block)


def use_batch_first_attention(clip_model: nn.Module) -> int:
    """:func:`use_side_branches` on every block of an open_clip CLIP's image and text towers
    (what ``CLIPDense`` does to the model it wraps); returns the number of blocks."""
    blocks = [*clip_model.visual.transformer.resblocks,
              *getattr(getattr(clip_model, "transformer", None), "resblocks", [])]
    count = 0
    for block in blocks:
        if hasattr(block, "attention") and hasattr(block, "attn"):
            use_side_branches(block)
            count += 1
    return count
