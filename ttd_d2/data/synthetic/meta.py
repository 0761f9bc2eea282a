"""What identifies a synthetic split on disk: its ``meta.json``, the generator version and the
per-layout generation parameters recorded there.

``meta.json`` holds the generator version, layout, split, seed, num_images, image_size, classes
and layout-specific fields: ``background_threshold`` and ``ignore_label`` (semseg),
``caption_order`` (captions), ``caption_noise`` and ``single_object_radius`` (image_text). A
split on disk counts as complete when the fields of ``IDENTITY_KEYS`` match the requested ones.

Generator versions (:data:`GENERATOR_VERSION`). ``writer.generate`` regenerates a split written
by an older version instead of reusing it (:func:`is_outdated`):

- 1: the first version.
- 2: evaluation captions (captions layout) never name the background: they come from the
  templates without a background slot, so a caption's ground-truth region, the union of its
  objects, is all that it names. The one-object scenes of image_text (training) splits draw
  their radius from :data:`TRAINING_SINGLE_OBJECT_RADIUS` (0.10-0.30 of the width) by default,
  recorded in ``meta.json`` as ``single_object_radius`` (version 1: the dominant range
  0.23-0.30, not recorded). ``single_object_radius=(0.23, 0.30)`` writes the images and
  captions of a version-1 image_text split exactly; semseg splits and every scene of several
  objects are unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple, Union

from .render import CLASSES

__all__ = [
    "GENERATOR_VERSION",
    "LAYOUTS",
    "TRAINING_SINGLE_OBJECT_RADIUS",
    "DEFAULT_BACKGROUND_THRESHOLD",
    "IGNORE_LABEL",
    "META_FILE",
    "IDENTITY_KEYS",
    "split_dir",
    "read_meta",
    "resolve_single_object_radius",
    "split_meta",
    "same_split",
    "is_outdated",
    "is_complete",
]

GENERATOR_VERSION = 2
LAYOUTS: Tuple[str, ...] = ("semseg", "captions", "image_text")
# Radius range (fraction of the width) of one-object scenes in image_text splits: single
# objects at every scale name each class word for small objects too, as secondary objects are
# (docs/RESULTS.md, "Lever experiments"). Evaluation layouts keep the dominant range.
TRAINING_SINGLE_OBJECT_RADIUS: Tuple[float, float] = (0.10, 0.30)
DEFAULT_BACKGROUND_THRESHOLD = 0.4  # placeholder, calibrated on semseg/val later
IGNORE_LABEL = 255
META_FILE = "meta.json"
# meta.json fields that must match for an existing split to count as complete
IDENTITY_KEYS = ("generator_version", "layout", "split", "seed", "num_images", "image_size", "caption_noise",
                 "single_object_radius")


def split_dir(root: Union[str, Path], layout: str, split: str) -> Path:
    """``root/<layout>/<split>``."""
    return Path(root) / layout / split


def read_meta(directory: Union[str, Path]) -> Optional[dict]:
    """The split's ``meta.json`` as a dict, or None if absent or unreadable."""
    path = Path(directory) / META_FILE
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def resolve_single_object_radius(
    layout: str, single_object_radius: Optional[Tuple[float, float]] = None
) -> Optional[Tuple[float, float]]:
    """The radius range of one-object scenes a split of ``layout`` is rendered with: for
    image_text, ``single_object_radius`` or :data:`TRAINING_SINGLE_OBJECT_RADIUS` when None; for
    the evaluation layouts None (the renderer's dominant range; giving a range is an error)."""
    if layout != "image_text":
        if single_object_radius is not None:
            raise ValueError("single_object_radius applies to the image_text layout only "
                             "(evaluation splits keep their distribution)")
        return None
    low, high = TRAINING_SINGLE_OBJECT_RADIUS if single_object_radius is None else single_object_radius
    if not 0 < low <= high <= 0.5:
        raise ValueError(f"single_object_radius must be 0 < low <= high <= 0.5, got {single_object_radius}")
    return float(low), float(high)


def split_meta(
    layout: str, split: str, seed: int, num_images: int, image_size: int, omit_prob: float, replace_prob: float,
    single_object_radius: Optional[Tuple[float, float]] = None,
) -> dict:
    """The ``meta.json`` of a split generated with these parameters (``single_object_radius``
    as :func:`resolve_single_object_radius` takes it)."""
    meta = {
        "generator_version": GENERATOR_VERSION,
        "layout": layout,
        "split": split,
        "seed": int(seed),
        "num_images": int(num_images),
        "image_size": int(image_size),
        "classes": list(CLASSES),
    }
    radius = resolve_single_object_radius(layout, single_object_radius)
    if layout == "semseg":
        meta.update(background_threshold=DEFAULT_BACKGROUND_THRESHOLD, ignore_label=IGNORE_LABEL)
    elif layout == "captions":
        meta.update(caption_order="dominant_first")
    else:
        meta.update(caption_noise={"omit_prob": omit_prob, "replace_prob": replace_prob},
                    single_object_radius=list(radius))
    return meta


def same_split(existing: Optional[dict], expected: dict) -> bool:
    """Whether ``existing`` (a ``meta.json`` or None) describes the split ``expected`` describes."""
    return existing is not None and all(existing.get(k) == expected.get(k) for k in IDENTITY_KEYS)


def is_outdated(existing: Optional[dict]) -> bool:
    """Whether ``existing`` (a ``meta.json`` or None) was written by an older generator version."""
    version = existing.get("generator_version") if isinstance(existing, dict) else None
    return isinstance(version, int) and version < GENERATOR_VERSION


def is_complete(
    root: Union[str, Path], layout: str, split: str, num_images: int, seed: int,
    image_size: int = 64, omit_prob: float = 0.3, replace_prob: float = 0.3,
    single_object_radius: Optional[Tuple[float, float]] = None,
) -> bool:
    """True when ``root/<layout>/<split>`` holds a finished split with these parameters, written
    by this generator version."""
    expected = split_meta(layout, split, seed, num_images, image_size, omit_prob, replace_prob, single_object_radius)
    return same_split(read_meta(split_dir(root, layout, split)), expected)
