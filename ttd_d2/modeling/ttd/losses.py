"""Text-tag self-distillation (TTD Step 2): masker, targets and the two losses.

Shapes: B captions, K tags per caption (padded; ``valid[b, k]`` marks real tags), h x w mask
grid. Loss weights are applied by the caller.

Captions with no valid tag (empty caption, or only stopwords/numbers) are excluded from both
losses: with no candidate tag there is no evidence about the image at all, so we do not push
their caption mask towards the all-zero union. (A caption whose valid tags are all *rejected*
is different: its union is all zeros and L_distill does push its mask to zero, as in the paper.)
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import torch

__all__ = [
    "DISTANCES",
    "TARGET_NORMS",
    "masker",
    "minmax_normalize",
    "distillation_targets",
    "mask_distance",
    "ttd_losses",
]

DISTANCES = ("l1", "mse", "bce")
# How a selected tag's mask becomes its target: "minmax" (the paper's, spatial min-max
# normalisation) | "none" (the teacher's masker probabilities as they are).
TARGET_NORMS = ("minmax", "none")

Scalar = Union[float, torch.Tensor]


def masker(cos: torch.Tensor, w: Scalar, b: Scalar) -> torch.Tensor:
    """TCL masker M = sigmoid(w * cos + b), any shape."""
    return torch.sigmoid(w * cos + b)


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spatial min-max normalisation of [..., h, w] maps to [0, 1].

    Each map becomes (m - min) / max(max - min, eps): a constant map gives 0, a map whose range
    is below ``eps`` stays in [0, 1) (never NaN).
    """
    lowest = maps.amin(dim=(-2, -1), keepdim=True)
    highest = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - lowest) / (highest - lowest).clamp_min(eps)


@torch.no_grad()
def distillation_targets(
    tag_masks: torch.Tensor, selected: torch.Tensor, norm: str = "minmax"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Self-distillation targets (stop-gradient).

    Args:
        tag_masks: [B, K, h, w] tag masks M_k.
        selected: BoolTensor[B, K], selected tags (must be False for padding, as ``select_tags``
            gives).
        norm: one of :data:`TARGET_NORMS`: ``minmax`` (the paper's T_k = minmax(M_k)) or
            ``none`` (T_k = M_k).
    Returns:
        targets: [B, K, h, w], norm(M_k) for selected tags, 0 otherwise (T_k).
        union: [B, h, w], pixel-wise max_k T_k (0 where no tag is selected) (U).
    Both are detached.
    """
    if norm not in TARGET_NORMS:
        raise ValueError(f"unknown target normalisation {norm!r}; expected one of {TARGET_NORMS}")
    tag_masks = tag_masks.detach()
    normalised = minmax_normalize(tag_masks) if norm == "minmax" else tag_masks
    targets = normalised * selected[:, :, None, None].to(tag_masks.dtype)
    if targets.shape[1] == 0:
        union = targets.new_zeros(targets.shape[0], *targets.shape[2:])
    else:
        union = targets.amax(dim=1)
    return targets, union


def mask_distance(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: str = "l1",
    reduce_dims: Sequence[int] = (-2, -1),
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean over ``reduce_dims`` (the pixels) of a per-pixel distance between masks in [0, 1].

    kind: "l1" |p - t|, "mse" (p - t)^2, "bce" -(t log p + (1 - t) log(1 - p)) with p clamped to
    [eps, 1 - eps] and computed in float32 (finite values and gradients at p = 0 or 1).
    E.g. pred/target [B, K, h, w] -> [B, K].
    """
    if kind == "l1":
        per_pixel = (pred - target).abs()
    elif kind == "mse":
        per_pixel = (pred - target).square()
    elif kind == "bce":
        probability = pred.float().clamp(eps, 1.0 - eps)
        target32 = target.float()
        per_pixel = -(target32 * probability.log() + (1.0 - target32) * torch.log1p(-probability))
        per_pixel = per_pixel.to(pred.dtype)
    else:
        raise ValueError(f"unknown mask distance {kind!r}; expected one of {DISTANCES}")
    return per_pixel.mean(dim=tuple(reduce_dims))


def _masked_mean(values: torch.Tensor, include: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``include``; 0 (still attached to the graph) if none is."""
    kept = torch.where(include, values, torch.zeros_like(values))
    return kept.sum() / include.sum().clamp_min(1).to(values.dtype)


def ttd_losses(
    caption_mask: torch.Tensor,
    tag_masks: torch.Tensor,
    targets: torch.Tensor,
    union: torch.Tensor,
    valid: torch.Tensor,
    distance: str = "l1",
) -> Dict[str, torch.Tensor]:
    """TTD losses; ``targets`` and ``union`` are detached here (stop-gradient).

    Args:
        caption_mask: [B, h, w] caption mask M_c.
        tag_masks: [B, K, h, w] tag masks M_k.
        targets: [B, K, h, w] T_k, union: [B, h, w] U (from ``distillation_targets``).
        valid: BoolTensor[B, K], real (non-padding) tags.
        distance: "l1" | "mse" | "bce".
    Returns:
        "loss_distill": Eq.(4) dist(M_c, sg(U)), mean over captions with at least one valid tag.
        "loss_tag": Eq.(5) mean_k dist(M_k, sg(T_k)) over each caption's valid tags, then the
            mean over captions with at least one valid tag (a caption with many tags weighs
            as much as one with few, as Eq. 5 is a per-caption mean).
    Each is a finite scalar; with nothing to average it is 0 but still part of the graph
    (so DDP sees every parameter used).
    """
    per_caption = mask_distance(caption_mask, union.detach(), distance)  # [B]
    per_tag = mask_distance(tag_masks, targets.detach(), distance)  # [B, K]
    has_tags = valid.any(dim=1)
    tag_count = valid.sum(dim=1).clamp_min(1).to(per_tag.dtype)
    per_caption_tag = torch.where(valid, per_tag, torch.zeros_like(per_tag)).sum(dim=1) / tag_count  # [B]
    return {
        "loss_distill": _masked_mean(per_caption, has_tags),
        "loss_tag": _masked_mean(per_caption_tag, has_tags),
    }
