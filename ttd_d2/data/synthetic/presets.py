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
from pathlib import Path
from typing import Sequence, Tuple, Union

from tqdm import tqdm

from .meta import is_complete, read_meta, split_dir
from .writer import generate

__all__ = ["BENCHMARK_IMAGE_SIZE", "SplitSpec", "ensure_splits", "quickstart_splits"]

# The benchmark's image side: configs/synthetic/Base-Synthetic.yaml's INPUT.TRAIN_SIZE (checked by
# tests/data/synthetic/test_synthetic_presets.py), the default of tools/generate_synthetic.py. 64 until
# commit 9dbe440, where a secondary object spanned about 2x2 patches of the 8x8 grid.
BENCHMARK_IMAGE_SIZE = 128


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


def ensure_splits(root: Union[str, Path], specs: Sequence[SplitSpec], image_size: int, workers: int = 0) -> None:
    """Generate the splits of ``specs`` missing under ``root`` (the synthetic root), drawn at
    ``image_size`` pixels (a job's base model's ``INPUT.TRAIN_SIZE``: ``BENCHMARK_IMAGE_SIZE`` for
    the shipped one, 64 for the 64 px experiments of docs/RESULTS.md), with one progress bar. A split of ``root``
    drawn at another size is an error naming the fix, raised before anything is written."""
    for spec in specs:
        folder = split_dir(root, spec.layout, spec.split)
        drawn = (read_meta(folder) or {}).get("image_size", image_size)
        if drawn != image_size:
            raise FileExistsError(
                f"{folder} was drawn at {drawn} px, the base model reads {image_size} px: point "
                f"DETECTRON2_DATASETS at another root (e.g. datasets{image_size}), or regenerate it with "
                f"tools/generate_synthetic.py --preset quickstart --image-size {image_size} --overwrite "
                f"(the benchmark's default size is {BENCHMARK_IMAGE_SIZE} px; it was 64 px until 2026-12-03)")
    missing = [s for s in specs if not is_complete(root, s.layout, s.split, s.num_images, s.seed, image_size)]
    with tqdm(total=sum(s.num_images for s in missing), desc="data generation", unit="img") as bar:
        for spec in missing:
            generate(root, spec.layout, spec.split, spec.num_images, spec.seed, image_size,
                     workers=workers, progress=bar.update)
