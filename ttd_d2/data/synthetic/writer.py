"""Writing synthetic splits to disk.

On-disk layouts under ``root`` (every PNG is named ``%06d.png`` after the image index):

- ``semseg/<split>/`` (VOC-like semantic segmentation)
    - ``images/*.png``: RGB images.
    - ``labels/*.png``: uint8, 0 = background, ``k`` = ``CLASSES[k - 1]`` (1..12); 255 is the
      ignore label, unused because the masks are exact.
- ``captions/<split>/`` (CC3M-TagMask-like caption grounding)
    - ``images/*.png``: RGB images.
    - ``caption_masks/*.png``: uint8, 1 where any object is visible (the caption names every
      object, so the caption mask is the union of the object masks), else 0.
    - ``instance_masks/*.png``: uint8, 0 = background, ``i`` = ``objects[i - 1]``'s visible part.
    - ``annotations.json``: list of records ``{"image", "caption", "tags", "caption_mask",
      "instance_mask", "objects": [{"category", "category_id", "dominant"}]}``; paths are
      relative to the split folder, objects dominant first, tags = the object words in the
      caption's order (dominant first).
- ``image_text/<split>/`` (CC3M-like image-text pairs, noisy training captions)
    - ``images/*.png``: RGB images.
    - ``captions.jsonl``: one ``{"image": relative path, "caption": str}`` per line.

Each split also has ``meta.json`` (generator version, layout, split, seed, num_images,
image_size, classes, and layout-specific fields), written last. A split is generated in a
hidden temporary folder next to its destination and renamed into place when complete, so a
crash never leaves a half-written split; a complete split with the same parameters is skipped.

Image ``i`` of a split depends only on ``(seed, i)``: layouts generated with the same seed show
the same scenes (e.g. ``semseg/test`` and ``captions/test`` are one set of images).

Seed map of the ``quickstart`` preset (:func:`quickstart_splits`). No seed serves two roles;
distinct seeds give independent per-image streams (``SeedSequence(seed, spawn_key=(i, k))``),
so no image of one split reappears in another unless both use the same seed on purpose:

    layout      split     seed  images  used for
    image_text  train        0   20000  TTD training
    image_text  train_fresh600k  5  600000  pretraining the base model (not in the preset; see checkpoints/)
    semseg      val          1     200  calibrating the background threshold
    captions    val          2     200  calibrating the masker bias (quickstart)
    semseg      test       100     300  evaluation (same scenes as captions/test)
    captions    test       100     300  evaluation
    semseg      test101    101     300  held-out repeat (same scenes as captions/test101)
    captions    test101    101     300  held-out repeat
    semseg      test102    102     300  held-out repeat (same scenes as captions/test102)
    captions    test102    102     300  held-out repeat
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .captions import evaluation_caption, training_caption
from .render import CLASSES, caption_mask, image_rngs, render_scene, semantic_label

__all__ = [
    "GENERATOR_VERSION",
    "LAYOUTS",
    "DEFAULT_BACKGROUND_THRESHOLD",
    "IGNORE_LABEL",
    "META_FILE",
    "SplitSpec",
    "quickstart_splits",
    "split_dir",
    "read_meta",
    "is_complete",
    "generate",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
LAYOUTS: Tuple[str, ...] = ("semseg", "captions", "image_text")
DEFAULT_BACKGROUND_THRESHOLD = 0.4  # placeholder, calibrated on semseg/val later
IGNORE_LABEL = 255
META_FILE = "meta.json"
MIN_IMAGES_FOR_POOL = 2000  # below this, starting worker processes costs more than it saves
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# meta.json fields that must match for an existing split to count as complete
_IDENTITY_KEYS = ("generator_version", "layout", "split", "seed", "num_images", "image_size", "caption_noise",
                  "single_object_radius")


@dataclass(frozen=True)
class SplitSpec:
    """One split to generate: ``layout`` in :data:`LAYOUTS`."""

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


def _meta(layout, split, seed, num_images, image_size, omit_prob, replace_prob, single_object_radius=None) -> dict:
    meta = {
        "generator_version": GENERATOR_VERSION,
        "layout": layout,
        "split": split,
        "seed": int(seed),
        "num_images": int(num_images),
        "image_size": int(image_size),
        "classes": list(CLASSES),
    }
    if layout == "semseg":
        meta.update(background_threshold=DEFAULT_BACKGROUND_THRESHOLD, ignore_label=IGNORE_LABEL)
    elif layout == "captions":
        meta.update(caption_order="dominant_first")
    else:
        meta.update(caption_noise={"omit_prob": omit_prob, "replace_prob": replace_prob})
        if single_object_radius:  # absent = DOMINANT_RADIUS, as in splits written before the option
            meta.update(single_object_radius=[float(r) for r in single_object_radius])
    return meta


def _same_split(existing: Optional[dict], expected: dict) -> bool:
    return existing is not None and all(existing.get(k) == expected.get(k) for k in _IDENTITY_KEYS)


def is_complete(
    root: Union[str, Path], layout: str, split: str, num_images: int, seed: int,
    image_size: int = 64, omit_prob: float = 0.3, replace_prob: float = 0.3,
    single_object_radius: Optional[Tuple[float, float]] = None,
) -> bool:
    """True when ``root/<layout>/<split>`` holds a finished split with these parameters."""
    expected = _meta(layout, split, seed, num_images, image_size, omit_prob, replace_prob, single_object_radius)
    return _same_split(read_meta(split_dir(root, layout, split)), expected)


def _write_png(path: str, array: np.ndarray) -> None:
    if not cv2.imwrite(path, array, _PNG_PARAMS):
        raise OSError(f"could not write {path}")


def _render_chunk(task: tuple) -> List[dict]:
    """Render and write images ``start..stop-1`` of a split into ``folder``; return their
    records (an empty dict per image for the semseg layout)."""
    folder, layout, seed, image_size, start, stop, omit_prob, replace_prob, single_object_radius = task
    records = []
    for index in range(start, stop):
        scene_rng, caption_rng = image_rngs(seed, index)
        scene = render_scene(scene_rng, image_size, single_object_radius)
        name = f"{index:06d}.png"
        _write_png(os.path.join(folder, "images", name), scene.image[:, :, ::-1])
        if layout == "semseg":
            _write_png(os.path.join(folder, "labels", name), semantic_label(scene))
            records.append({})
        elif layout == "captions":
            caption = evaluation_caption(scene.objects, scene.background, caption_rng)
            _write_png(os.path.join(folder, "caption_masks", name), caption_mask(scene))
            _write_png(os.path.join(folder, "instance_masks", name), scene.instance_mask)
            records.append({
                "image": f"images/{name}",
                "caption": caption.text,
                "tags": list(caption.words),
                "caption_mask": f"caption_masks/{name}",
                "instance_mask": f"instance_masks/{name}",
                "objects": [
                    {"category": o.category, "category_id": o.category_id, "dominant": o.dominant}
                    for o in scene.objects
                ],
            })
        else:
            caption = training_caption(scene.objects, scene.background, caption_rng, omit_prob, replace_prob)
            records.append({"image": f"images/{name}", "caption": caption.text})
    return records


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _render_all(tasks: Sequence[tuple], workers: int, progress: Optional[Callable[[int], None]]) -> List[dict]:
    records: List[dict] = []

    def collect(chunk_records):
        records.extend(chunk_records)
        if progress is not None:
            progress(len(chunk_records))

    if workers <= 1 or len(tasks) == 1 or tasks[-1][5] < MIN_IMAGES_FOR_POOL:
        for task in tasks:
            collect(_render_chunk(task))
        return records
    context = multiprocessing.get_context("spawn")  # safe even if the caller holds threads
    with context.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
        for chunk_records in pool.imap(_render_chunk, tasks):
            collect(chunk_records)
    return records


_LAYOUT_FOLDERS: Dict[str, Tuple[str, ...]] = {
    "semseg": ("images", "labels"),
    "captions": ("images", "caption_masks", "instance_masks"),
    "image_text": ("images",),
}


def _write_index(folder: Path, layout: str, records: List[dict]) -> None:
    if layout == "captions":
        with open(folder / "annotations.json", "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
    elif layout == "image_text":
        with open(folder / "captions.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


def _remove_abandoned_temporaries(parent: Path, split: str) -> None:
    """Delete ``.tmp-<split>-<pid>-*`` folders whose process no longer exists (a crash)."""
    for path in parent.glob(f".tmp-{split}-*"):
        match = re.match(rf"^\.tmp-{re.escape(split)}-(\d+)-", path.name)
        if not match or not path.is_dir():
            continue
        try:
            os.kill(int(match.group(1)), 0)  # signal 0: existence check only
        except ProcessLookupError:
            logger.info("removing abandoned temporary folder %s", path)
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def generate(
    root: Union[str, Path],
    layout: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int = 64,
    *,
    workers: int = 0,
    overwrite: bool = False,
    omit_prob: float = 0.3,
    replace_prob: float = 0.3,
    single_object_radius: Optional[Tuple[float, float]] = None,
    chunk_size: int = 500,
    progress: Optional[Callable[[int], None]] = None,
) -> Path:
    """Generate ``root/<layout>/<split>`` (layouts in the module docstring).

    Args:
        root: the synthetic dataset root (e.g. ``$DETECTRON2_DATASETS/synthetic``).
        layout: one of :data:`LAYOUTS`.
        split: split name: letters, digits, ``_`` and ``-``.
        num_images: number of images.
        seed: split seed; image ``i`` depends only on ``(seed, i)``.
        image_size: side of the square images, pixels.
        workers: processes for rendering; 0 or 1 (or fewer than ``MIN_IMAGES_FOR_POOL``
            images) renders in this process. Workers are started with "spawn": a script
            calling this with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard.
        overwrite: replace an existing split whose parameters differ (otherwise an error).
        omit_prob, replace_prob: noise of the training captions (image_text layout only).
        single_object_radius: (low, high) radius range, in fractions of the width, of scenes
            with one object (image_text layout only; None = the dominant range 0.23-0.30).
            (0.10, 0.30) names every class word for small objects too, which made word maps
            localise secondary objects (docs/RESULTS.md, "Lever experiments"). Recorded in
            ``meta.json``.
        chunk_size: images per rendering task.
        progress: called with the number of images finished, after every chunk.

    Returns:
        the split folder. A complete split with the same parameters is left as it is.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not _SPLIT_NAME.match(split):
        raise ValueError(f"bad split name {split!r}: use letters, digits, '_' and '-'")
    if num_images <= 0 or image_size <= 0:
        raise ValueError(f"num_images and image_size must be positive, got {num_images}, {image_size}")
    target = split_dir(root, layout, split)
    if single_object_radius is not None and layout != "image_text":
        raise ValueError("single_object_radius applies to the image_text layout only (evaluation splits keep their distribution)")
    if single_object_radius is not None and not 0 < single_object_radius[0] <= single_object_radius[1] <= 0.5:
        raise ValueError(f"single_object_radius must be 0 < low <= high <= 0.5, got {single_object_radius}")
    expected = _meta(layout, split, seed, num_images, image_size, omit_prob, replace_prob, single_object_radius)
    if target.exists():
        if _same_split(read_meta(target), expected):
            logger.info("%s is complete, skipping", target)
            return target
        if not overwrite:
            raise FileExistsError(
                f"{target} exists with other parameters (see its {META_FILE}); "
                "pass overwrite=True (--overwrite) to replace it"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(target.parent, split)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{split}-{os.getpid()}-", dir=target.parent))
    try:
        for sub in _LAYOUT_FOLDERS[layout]:
            (temporary / sub).mkdir()
        chunk = max(1, min(chunk_size, math.ceil(num_images / max(1, 4 * workers))))
        tasks = [
            (str(temporary), layout, seed, image_size, start, min(start + chunk, num_images), omit_prob, replace_prob,
             single_object_radius)
            for start in range(0, num_images, chunk)
        ]
        records = _render_all(tasks, workers, progress)
        _write_index(temporary, layout, records)
        with open(temporary / META_FILE, "w", encoding="utf-8") as f:
            json.dump(expected, f, indent=1)
        if target.exists():  # overwrite: move the old split aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".old-{split}-", dir=target.parent))
            os.replace(target, old / split)
            os.replace(temporary, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    logger.info("wrote %d images to %s", num_images, target)
    return target
