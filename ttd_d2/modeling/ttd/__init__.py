"""TTD (Text-Tag Self-Distillation): tags, tag scores, distillation targets and losses."""
from .losses import DISTANCES, TARGET_NORMS, distillation_targets, mask_distance, masker, minmax_normalize, ttd_losses
from .scoring import (
    SCORING_METHODS,
    combined_image_text_scores,
    cosine_maps,
    image_tag_scores,
    pixel_tag_scores,
    score_tags,
    select_tags,
    text_tag_scores,
)
from .tags import (
    candidate_tags,
    caption_to_tags,
    nltk_noun_adjective_mask,
    pad_tag_batch,
    tags_in_token_window,
    token_window,
    visible_prefix,
)

__all__ = [
    "DISTANCES",
    "SCORING_METHODS",
    "candidate_tags",
    "caption_to_tags",
    "combined_image_text_scores",
    "cosine_maps",
    "TARGET_NORMS",
    "distillation_targets",
    "image_tag_scores",
    "mask_distance",
    "masker",
    "minmax_normalize",
    "nltk_noun_adjective_mask",
    "pad_tag_batch",
    "pixel_tag_scores",
    "score_tags",
    "select_tags",
    "tags_in_token_window",
    "text_tag_scores",
    "token_window",
    "ttd_losses",
    "visible_prefix",
]
