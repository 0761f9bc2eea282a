"""TCL's training objective as pure functions (Cha et al., CVPR 2023, "Learning to Generate
Text-grounded Mask for Open-world Semantic Segmentation from Only Image-Text Pairs").

Shapes: B local images (one caption each), N = B x world size captions of the global batch
(every rank's captions, this rank's first at ``offset = rank * B``), D embedding dim,
h x w the mask grid (the TCL backbone's dense grid, 4x the patch grid). Loss weights are
applied by the caller (:mod:`.objective`). Every loss is a finite scalar that stays in the graph
when it has nothing to average (an empty mask set gives 0), so distributed training sees every
trainable parameter used.

Where a function differs from TCL's public code (models/tcl/tcl.py, mi.py, gumbel.py), its
docstring says so.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from ..ttd.losses import masker

__all__ = [
    "area_prior_losses",
    "extended_info_nce",
    "gather_rows",
    "gumbel_sigmoid",
    "info_nce",
    "masked_pool",
    "sample_masks",
    "text_grounded_similarity",
    "total_variation",
]


def gumbel_sigmoid(logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                   generator: torch.Generator = None) -> torch.Tensor:
    """A Gumbel-sigmoid (binary Concrete) sample of ``logits``, any shape.

    y = sigmoid((logits + g) / tau) with g = log(u) - log(1 - u), u ~ U(0, 1) (g is Logistic(0, 1),
    the difference of two Gumbel(0, 1) variables). ``hard``: the forward value is the binary
    1[y > 0.5] and the gradient is that of y (straight-through), written as 1[y > 0.5] + (y - sg(y))
    so that the value is exactly 0 or 1. ``generator`` (on the logits' device) makes the noise
    reproducible; None uses torch's global generator.

    Differs from TCL: u is clamped to [smallest normal float, 1) so g is finite; TCL's hard value
    is 1[y > 0.5] - sg(y) + y, equal up to rounding.
    """
    if tau <= 0:
        raise ValueError(f"gumbel_sigmoid: tau must be > 0 (MODEL.TCL.GUMBEL_TAU), got {tau}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    u = u.clamp_min(torch.finfo(logits.dtype).tiny)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    if not hard:
        return soft
    return (soft > 0.5).to(soft.dtype) + (soft - soft.detach())


def sample_masks(cos: torch.Tensor, w: torch.Tensor, b: torch.Tensor, tau: float = 1.0, training: bool = True,
                 generator: torch.Generator = None) -> torch.Tensor:
    """TCL's masker for the masks that cut captions' regions out of images (``Sim2Mask``).

    Training: a hard Gumbel-sigmoid sample of the masker's logits w * cos + b (binary forward,
    straight-through gradient, :func:`gumbel_sigmoid`); otherwise the masker's probability
    sigmoid(w * cos + b) itself (TCL's evaluation uses that soft mask too). Any shape.
    """
    if not training:
        return masker(cos, w, b)
    return gumbel_sigmoid(w * cos + b, tau, hard=True, generator=generator)


def masked_pool(dense: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mask-weighted average of pixel embeddings: pooled[b, n] = sum_p m_bn(p) F_b(p) / (sum_p m_bn(p) + eps).

    Args:
        dense: [B, D, h, w] pixel embeddings F.
        masks: [B, N, h, w] soft or hard masks m in [0, 1].
    Returns: [B, N, D]; an all-zero mask pools to the zero vector. (As TCL's ``masked_pool``.)
    """
    weights = masks / (masks.sum(dim=(2, 3), keepdim=True) + eps)
    return torch.einsum("bdhw,bnhw->bnd", dense, weights)


def text_grounded_similarity(dense: torch.Tensor, masks: torch.Tensor, text: torch.Tensor,
                             eps: float = 1e-6) -> torch.Tensor:
    """S[b, n] = cos(masked_pool(F_b, m_bn), t_n): image b pooled with caption n's mask, against caption n.

    Args:
        dense: [B, D, h, w]; masks: [B, N, h, w]; text: [N, D].
    Returns: [B, N]. A zero pooled vector has cosine 0 (normalisation with ``eps``, as TCL's).
    """
    pooled = F.normalize(masked_pool(dense, masks, eps), dim=-1, eps=eps)
    return torch.einsum("bnd,nd->bn", pooled, F.normalize(text, dim=-1, eps=eps))


def gather_rows(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] of every rank along dim 0, with gradient (as open_clip's
    ``gather_features(gather_with_grad=True)``); ``x`` itself when ``world_size`` is 1."""
    if world_size <= 1:
        return x
    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
             rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Symmetric InfoNCE between images and their captions (TCL's ``tcli_loss``, CLIP's loss).

    L = 1/2 [CE(s I_b . T_n over n, label b) + CE(s T_b . I_m over m, label b)], with I, T the
    L2-normalised embeddings, s = ``logit_scale`` (the temperature, already exponentiated),
    rows this rank's B images / captions and columns the global batch's N (gathered with
    gradient), label = offset + b. This is open_clip's ``ClipLoss(local_loss=True)``, which
    computes exactly TCL's ``InfoNCE``.

    Args:
        image_emb, text_emb: [B, D] (normalised here).
    """
    loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    return loss(F.normalize(image_emb, dim=-1, eps=1e-6), F.normalize(text_emb, dim=-1, eps=1e-6), logit_scale)


def extended_info_nce(similarity: torch.Tensor, logit_scale: torch.Tensor, rank: int = 0,
                      world_size: int = 1) -> torch.Tensor:
    """TCL's "extended" InfoNCE (``tclf_loss``) on text-grounded similarities.

    With S[m, n] = :func:`text_grounded_similarity` over the global batch (image m pooled with
    caption n's mask, against caption n; m, n in 0..N-1) and s = ``logit_scale``, for each of
    this rank's images / captions i = offset + b:
    L = 1/2 [mean_b CE(s S[i, :], i) + mean_b CE(s S[:, i], i)]. The image side compares image
    i's region for each caption with that caption, the text side caption i with every image's
    region for caption i.

    Args:
        similarity: [B, N], this rank's rows S[offset + b, n].
    Returns: a scalar.

    Differs from TCL only in how the text side is gathered across ranks: TCL gathers the
    pooled embeddings [B, B, D] of each rank's images for this rank's captions; here the rows
    of S (N scalars per image) are gathered, with gradient, and the text side reads S's
    columns. Same values and gradients; each rank sends B x N scalars instead of B x B x D.
    """
    batch = similarity.shape[0]
    offset = rank * batch
    if similarity.shape[1] != batch * world_size:
        raise ValueError(f"extended_info_nce: similarity {tuple(similarity.shape)} must be [B, B * world_size = "
                         f"{batch * world_size}] (every rank the same local batch)")
    labels = torch.arange(batch, device=similarity.device) + offset
    columns = gather_rows(similarity, world_size)[:, offset : offset + batch].t()  # [B, N]: S[m, offset + b]
    return 0.5 * (F.cross_entropy(logit_scale * similarity, labels) + F.cross_entropy(logit_scale * columns, labels))


def area_prior_losses(masks: torch.Tensor, offset: int = 0, positive_prior: float = 0.4,
                      negative_prior: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """TCL's area priors: |mean(positive masks) - 0.4| and |mean(negative masks) - 0|.

    Args:
        masks: [B, N, h, w] soft masks of this rank's B images for the N captions of the global
            batch; the positive of image b is caption ``offset + b``, all others are negatives.
    Returns: (positive loss, negative loss), each |mean over its masks' pixels - prior|. The
    negative mean is (sum of all - sum of positives) / count, without copying the negatives out.

    Differs from TCL: with no negative mask (a global batch of one) the negative loss is 0
    (TCL's mean over an empty tensor is NaN).
    """
    batch, captions = masks.shape[:2]
    pixels = masks.shape[2] * masks.shape[3]
    positives = masks[torch.arange(batch, device=masks.device), torch.arange(batch, device=masks.device) + offset]
    positive_sum, total_sum = positives.sum(), masks.sum()
    positive_loss = (positive_sum / max(batch * pixels, 1) - positive_prior).abs()
    negatives = batch * (captions - 1) * pixels
    if negatives == 0:
        return positive_loss, 0.0 * total_sum
    return positive_loss, ((total_sum - positive_sum) / negatives - negative_prior).abs()


def _mean_or_zero(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.sum()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of maps [..., h, w]:
    mean |x[..., i, j+1] - x[..., i, j]| + mean |x[..., i+1, j] - x[..., i, j]| (means over every
    element of the difference tensors, as TCL's ``tv_loss``).

    Differs from TCL: a direction with a single row or column has no differences and adds 0
    (TCL's mean over an empty tensor is NaN).
    """
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs()
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs()
    return _mean_or_zero(horizontal) + _mean_or_zero(vertical)
