"""TCL's own training objective (Cha et al., CVPR 2023): pure losses and the module that the
``TCL`` backbone trains with (``MODEL.TCL.LOSS``)."""
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
from .objective import TCLObjective, Temperature

__all__ = [
    "TCLObjective",
    "Temperature",
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
