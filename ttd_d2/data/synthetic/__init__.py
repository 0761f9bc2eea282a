"""Synthetic shapes benchmark: scene rendering, captions, on-disk layouts."""
from .captions import (
    BACKGROUND_VOCABULARY,
    BACKGROUND_WORDS,
    CONNECTORS,
    EVALUATION_TEMPLATES,
    FILLER_WORDS,
    TEMPLATES,
    Caption,
    caption_words,
    evaluation_caption,
    training_caption,
)
from .presets import SplitSpec, quickstart_splits
from .render import BACKGROUND_KINDS, CLASSES, ObjectSpec, Scene, image_rngs, render_scene
from .writer import (
    DEFAULT_BACKGROUND_THRESHOLD,
    GENERATOR_VERSION,
    IGNORE_LABEL,
    LAYOUTS,
    TRAINING_SINGLE_OBJECT_RADIUS,
    generate,
    is_complete,
    read_meta,
    split_dir,
)
