"""TCL's own training objective (Cha et al., CVPR 2023): its losses as pure functions."""
from .losses import (
    area_prior_losses,
    extended_info_nce,
    gather_rows,
    gumbel_sigmoid,
    info_nce,
    masked_pool,
    sample_masks,
    text_grounded_similarity,
    total_variation,
)

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
