"""Evaluators and metrics of the TTD evaluation protocols (docs/METHOD.md, "Evaluation")."""
from .caption_seg import CaptionSegEvaluator, build_caption_evaluators
from .sem_seg import SemSegRatesEvaluator
from .tag_selection import TagSelectionEvaluator
from .text_bias import TextBiasEvaluator
from .zero_shot import ZeroShotEvaluator

__all__ = [
    "TagSelectionEvaluator",
    "CaptionSegEvaluator",
    "SemSegRatesEvaluator",
    "TextBiasEvaluator",
    "ZeroShotEvaluator",
    "build_caption_evaluators",
]
