"""Tag scores of TTD Step 1 (Eqs. 1, 2, 7) and tag selection, batched over captions.

Shapes: B captions, K tags per caption (padded; ``valid[b, k]`` marks real tags), D embedding
dim, h x w patch grid. Embeddings are expected L2-normalised; they are normalised again here
(cheap, and zero padding rows stay zero). ``tau`` is the CLIP logit scale (``logit_scale.exp()``),
a float or a 0-d tensor. Softmaxes run over the valid tags of each caption only; invalid tags
score 0, and a caption with no valid tag scores all zeros (never NaN).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

__all__ = [
    "SCORING_METHODS",
    "cosine_maps",
    "image_tag_scores",
    "text_tag_scores",
    "pixel_tag_scores",
    "combined_image_text_scores",
    "select_tags",
    "score_tags",
]

SCORING_METHODS = ("s_image", "s_text", "s_pixel", "image_text")

Scale = Union[float, torch.Tensor]


def _masked_softmax(logits: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax of ``logits`` along ``dim`` over entries where ``valid`` (broadcastable) is True;
    invalid entries are 0. A slice with no valid entry is all zeros, with finite gradients."""
    valid = valid.expand_as(logits)
    very_negative = torch.finfo(logits.dtype).min
    probabilities = torch.softmax(logits.masked_fill(~valid, very_negative), dim=dim)
    return probabilities * valid.to(probabilities.dtype)


def _tag_similarities(query: torch.Tensor, tag_emb: torch.Tensor) -> torch.Tensor:
    """cos(query[b], tag_emb[b, k]): query [B, D], tag_emb [B, K, D] -> [B, K]."""
    return torch.einsum("bd,bkd->bk", F.normalize(query, dim=-1), F.normalize(tag_emb, dim=-1))


def cosine_maps(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity maps S_k(p) = cos(F(p), t_k).

    Args:
        dense: [B, D, h, w] pixel embeddings.
        text: [B, K, D] text embeddings.
    Returns: [B, K, h, w].

    F(p) . t_k / max(|F(p)|, 1e-12) with t_k normalised: ``F.normalize``'s values and gradients,
    with the division on the K maps instead of the D-channel map (training: D 128 at 64 x 64, K
    about 9), which costs a fraction of the passes over the map, forward and backward.
    """
    dots = torch.einsum("bdhw,bkd->bkhw", dense, F.normalize(text, dim=-1))
    return dots / torch.linalg.vector_norm(dense, dim=1, keepdim=True).clamp_min(1e-12)


def image_tag_scores(
    global_emb: torch.Tensor, tag_emb: torch.Tensor, valid: torch.Tensor, tau: Scale
) -> torch.Tensor:
    """Eq.(1) s_image(k) = softmax_k(tau * cos(g, t_k)).

    global_emb [B, D], tag_emb [B, K, D], valid [B, K] -> [B, K] (0 for invalid tags).
    """
    return _masked_softmax(tau * _tag_similarities(global_emb, tag_emb), valid, dim=1)


def text_tag_scores(
    caption_emb: torch.Tensor, tag_emb: torch.Tensor, valid: torch.Tensor, tau: Scale
) -> torch.Tensor:
    """Eq.(7) s_text(k) = softmax_k(tau * cos(t_c, t_k)).

    caption_emb [B, D], tag_emb [B, K, D], valid [B, K] -> [B, K] (0 for invalid tags).
    """
    return _masked_softmax(tau * _tag_similarities(caption_emb, tag_emb), valid, dim=1)


def pixel_tag_scores(cos_maps: torch.Tensor, valid: torch.Tensor, tau: Scale) -> torch.Tensor:
    """Eq.(2) s_pixel(k) = max_p softmax_k(tau * S_k(p)): per-pixel softmax over the caption's
    valid tags, then the maximum over pixels.

    cos_maps [B, K, h, w], valid [B, K] -> [B, K] (0 for invalid tags).
    """
    per_pixel = _masked_softmax(tau * cos_maps, valid[:, :, None, None], dim=1)
    return per_pixel.flatten(2).amax(dim=2)


def combined_image_text_scores(s_image: torch.Tensor, s_text: torch.Tensor) -> torch.Tensor:
    """The ``image+text`` baseline: (s_image + s_text) / 2, [B, K]."""
    return 0.5 * (s_image + s_text)


def select_tags(scores: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Selected tags: ``scores >= threshold`` and valid. [B, K] -> BoolTensor[B, K]."""
    return (scores >= threshold) & valid


def score_tags(
    method: str,
    tag_emb: torch.Tensor,
    valid: torch.Tensor,
    tau: Scale,
    global_emb: Optional[torch.Tensor] = None,
    caption_emb: Optional[torch.Tensor] = None,
    cos_maps: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Scores [B, K] by one of ``SCORING_METHODS``. Needs ``global_emb`` for s_image,
    ``caption_emb`` for s_text, both for image_text, ``cos_maps`` [B, K, h, w] for s_pixel."""

    def required(name: str, value: Optional[torch.Tensor]) -> torch.Tensor:
        if value is None:
            raise ValueError(f"score_tags({method!r}) needs {name}")
        return value

    if method == "s_image":
        return image_tag_scores(required("global_emb", global_emb), tag_emb, valid, tau)
    if method == "s_text":
        return text_tag_scores(required("caption_emb", caption_emb), tag_emb, valid, tau)
    if method == "s_pixel":
        return pixel_tag_scores(required("cos_maps", cos_maps), valid, tau)
    if method == "image_text":
        return combined_image_text_scores(
            image_tag_scores(required("global_emb", global_emb), tag_emb, valid, tau),
            text_tag_scores(required("caption_emb", caption_emb), tag_emb, valid, tau),
        )
    raise ValueError(f"unknown tag scoring method {method!r}; expected one of {SCORING_METHODS}")
