"""The adapted projection ``x W^T + b + x_low (s B A)^T`` of a frozen ``W``, as few full-size
passes as exact arithmetic allows.

``low_rank_linear`` is what both adapter kinds run (:class:`~.layers.LoRALinear` for the MLP,
:func:`~.side_branch.lora_linear` for the attention projections). Its forward forms the rank-r
product first and accumulates the frozen product into it, so that the add is the large
product's epilogue (:func:`_frozen_plus_low_rank`). With gradients it runs
:class:`_FrozenLowRankLinear`, an autograd function whose backward forms the input gradient in
one product, ``dx = g (W + s B A)``, the adapter folded into a temporary [out, in] weight. Left
to autograd, the branch's input gradient is a tensor of its own, added to the projection's by a
separate elementwise kernel: one extra write and three extra passes over ``[tokens, in]`` per
adapted layer, ~100 adapted layers per default TTD step (165 bf16 add kernels, 8.9 ms per step
on the GPU host; benchmarks/README.md); accumulated in place by ``addmm_`` it is still one
read and one write of ``[tokens, in]`` (a rank-r product, memory-bound). The function forms no
gradient of ``W`` or ``b`` (frozen) and saves what autograd saved (``x``, the cast ``W``, the
``[tokens, r]`` low-rank activation).

Why not a library: the fusion is specific to a frozen weight plus a low-rank side branch, and
``torch.compile`` (which would find it) does not apply to the eager training step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from .layers import _LoRAMixin

__all__ = ["low_rank_linear"]


def low_rank_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], lora: "_LoRAMixin",
                    x_low: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias) + x_low D^T`` [..., out] for the adapter's delta ``D``
    (``scaling * B A``, or ``delta_override``) and ``x`` [..., in]; ``x_low`` (default ``x``) is
    what the low-rank branch reads (the caller's dropout of ``x``).

    On ``x`` flattened to 2-D, the rank-r product (scaling applied to ``B`` [out, r], not to the
    [..., out] product) is formed first and the frozen product accumulated into it by
    ``addmm_``: the add is the large matrix product's epilogue, not a full-size kernel of its
    own (:func:`_frozen_plus_low_rank`). With gradients and a frozen ``weight`` / ``bias`` the
    backward folds the adapter into the input gradient's product
    (:class:`_FrozenLowRankLinear`).
    """
    shared_input = x_low is None or x_low is x
    x = _autocast_input(x)
    x_low = x if shared_input else x_low
    flat = x.reshape(-1, x.shape[-1])
    low_in = flat if shared_input else x_low.reshape(-1, x_low.shape[-1])
    if lora.delta_override is not None:  # the EMA teacher: no graph, any dtype (autocast casts)
        y = torch.addmm(F.linear(flat, weight, bias), low_in, lora.delta_override.t())
    elif _fused_backward_applies(flat, low_in, weight, bias, lora):
        y = _FrozenLowRankLinear.apply(flat, None if shared_input else low_in, weight, bias, lora.lora_A,
                                       lora.lora_B, lora.scaling)
    else:
        low = F.linear(low_in, lora.lora_A)  # [N, r]; autocast's dtype under autocast
        y = _frozen_plus_low_rank(flat, weight, bias, low, lora.scaling * lora.lora_B)
    return y.view(*x.shape[:-1], y.shape[-1])


def _frozen_plus_low_rank(x, weight, bias, low, b_scaled) -> torch.Tensor:
    """``x W^T + b + low b_scaled^T`` [N, out] for ``x`` [N, in], ``low`` [N, r], all in
    ``x``'s dtype (in-place products are outside autocast, so the casts are explicit).

    The rank-r product comes first, with the bias, as the [N, out] tensor into which the frozen
    product then accumulates: the large product's epilogue reads it almost for free. In the
    other order the rank-r product is accumulated into the frozen product's output, a
    memory-bound pass that reads and writes all of [N, out]: on the GPU host it made an adapted
    ViT-B/16 projection cost twice the plain one (23.5 against 12.1 ms of kernels per 12 blocks
    of a batch of 64 at 448 px; 19.0 in this order: ``benchmarks/bench_low_rank.py``). The output is a tensor of its
    own, not a view (an in-place update of a view would make autograd copy the whole gradient
    in the backward: ``CopySlices``, 17.8 ms per default TTD step).
    """
    dtype = x.dtype
    low, b_scaled = low.to(dtype), b_scaled.to(dtype)
    y = low @ b_scaled.t() if bias is None else torch.addmm(bias.to(dtype), low, b_scaled.t())
    return y.addmm_(x, weight.to(dtype).t())


def _fused_backward_applies(flat, low_in, weight, bias, lora) -> bool:
    """The autograd function is used when a backward will run through it and the projection is
    frozen; not while dynamo traces (inductor derives and fuses the backward itself)."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return False
    return flat.requires_grad or low_in.requires_grad or lora.lora_A.requires_grad or lora.lora_B.requires_grad


def _autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` cast once to the autocast dtype when autocast would cast it: the frozen projection
    and the low-rank branch both read it, and autocast casts an activation anew for each call
    (it caches only casts of leaf weights that require grad). The same bits reach both matrix
    products; saves one full-size cast per adapted layer that reads a float32 input (after
    every layer norm), forward and backward."""
    if not x.is_floating_point():
        return x
    device_type = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type: autocast then casts per call, as before
        return x
    if not enabled:
        return x
    dtype = torch.get_autocast_dtype(device_type)
    return x if x.dtype == dtype else x.to(dtype)


class _FrozenLowRankLinear(torch.autograd.Function):
    """``y = x W^T + b + x_low A^T (s B)^T`` [N, out] for a frozen ``W`` [out, in] and ``b``
    [out], ``A`` [r, in], ``B`` [out, r], ``x`` [N, in]; ``x_low`` [N, in] is ``x`` when passed
    as None. The products run in ``x``'s dtype (the caller casts ``x`` to autocast's); the
    weights are cast here, outside autograd, so that the function is one node of the graph
    (the casts and the scaling of ``B`` would be four more per adapted layer, each a host-side
    dispatch in the text tower, whose small kernels leave the GPU waiting for the host).

    Backward, with ``g`` [N, out] and ``g_low = g (s B)`` [N, r]: ``dx = g (W + s B A)`` when the
    branch reads ``x`` (else ``g W``, and ``dx_low = g_low A``). Exact in exact arithmetic; under
    bf16 the folded weight is rounded once, at the weight's resolution, as the autocast cast of
    ``W`` already is: a small ``s B A`` survives that rounding on average over the weight's
    elements, and the error against float64 is autograd's path's (tested). The forward keeps
    ``x W^T + (x A^T)(s B)^T``: folding there would change the model's outputs, not only a
    gradient's rounding. The adapters' gradients: ``dA = g_low^T x_low``,
    ``dB = s g^T (x_low A^T)``, in their own dtype; none for ``W`` and ``b``.
    """

    @staticmethod
    def forward(ctx, x, x_low, weight, bias, lora_a, lora_b, scaling):
        dtype = x.dtype
        low_in = x if x_low is None else x_low.to(dtype)
        weight, a, b_scaled = weight.to(dtype), lora_a.to(dtype), (lora_b * scaling).to(dtype)
        low = low_in @ a.t()  # [N, r]
        y = _frozen_plus_low_rank(x, weight, bias, low, b_scaled)
        ctx.separate_low_input, ctx.scaling = x_low is not None, scaling
        ctx.adapter_dtypes = lora_a.dtype, lora_b.dtype
        ctx.save_for_backward(low_in, weight, a, b_scaled, low)
        return y

    @staticmethod
    def backward(ctx, grad):
        low_in, weight, a, b_scaled, low = ctx.saved_tensors
        grad = grad.to(low.dtype)
        needs_x, needs_x_low, _, _, needs_a, needs_b, _ = ctx.needs_input_grad
        grad_x = grad_x_low = grad_a = grad_b = None
        if needs_x:
            # dx = g (W + s B A): the adapter folded into the weight for this product only,
            # one [out, in] addmm instead of a second pass over [N, in] (see the class doc)
            grad_x = grad @ (weight if ctx.separate_low_input else torch.addmm(weight, b_scaled, a))
        needs_x_low = ctx.separate_low_input and needs_x_low
        if needs_x_low or needs_a:
            grad_low = grad @ b_scaled  # [N, r]
            if needs_x_low:
                grad_x_low = grad_low @ a
            if needs_a:
                grad_a = (grad_low.t() @ low_in).to(ctx.adapter_dtypes[0])
        if needs_b:
            grad_b = (grad.t() @ low).to(ctx.adapter_dtypes[1]).mul_(ctx.scaling)
        return grad_x, grad_x_low, None, None, grad_a, grad_b, None
