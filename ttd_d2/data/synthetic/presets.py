"""The splits a job needs, with their seeds: the ``quickstart`` preset.

Seed map of the ``quickstart`` preset (:func:`quickstart_splits`) and of the shipped tiny CLIP's
pretraining data (checkpoints/README.md). No seed serves two roles, except that image_text
``train`` and ``pretrain`` share seed 0 (the same scenes of several objects, as when they were
one split); distinct seeds give independent per-image streams (``SeedSequence(seed,
spawn_key=(i, k))``), so no image of one split reappears in another unless both use the same
seed on purpose:

    layout      split     seed  images  used for
    image_text  train        0   20000  TTD training (one-object scenes at radius 0.10-0.30)
    image_text  train_fresh600k  5  600000  pretraining the base model (not in the preset; see checkpoints/)
    semseg      val          1     200  calibrating the background threshold and the word-level masker bias
    captions    val          2     200  calibrating the tag threshold (recorded by the quickstart)
    semseg      test       100     300  evaluation (same scenes as captions/test)
    captions    test       100     300  evaluation
    semseg      test101    101     300  held-out repeat (same scenes as captions/test101)
    captions    test101    101     300  held-out repeat
    semseg      test102    102     300  held-out repeat (same scenes as captions/test102)
    captions    test102    102     300  held-out repeat
"""
from dataclasses import dataclass
from typing import Tuple

__all__ = ["SplitSpec", "quickstart_splits"]


@dataclass(frozen=True)
class SplitSpec:
    """One split to generate: ``layout`` in :data:`~.meta.LAYOUTS`."""

    layout: str
    split: str
    seed: int
    num_images: int


def quickstart_splits(
    train_images: int = 20000, val_images: int = 200, test_images: int = 300
) -> Tuple[SplitSpec, ...]:
    """Every split the quickstart needs (seed map in the module docstring)."""
    specs = [
        SplitSpec("image_text", "train", 0, train_images),
        SplitSpec("semseg", "val", 1, val_images),
        SplitSpec("captions", "val", 2, val_images),
    ]
    for seed, split in ((100, "test"), (101, "test101"), (102, "test102")):
        specs.append(SplitSpec("semseg", split, seed, test_images))
        specs.append(SplitSpec("captions", split, seed, test_images))
    return tuple(specs)
