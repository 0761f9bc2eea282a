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
image_size, classes, and layout-specific fields: :mod:`.meta`, which also lists the generator
versions), written last. A split is generated in a hidden temporary folder next to its
destination and renamed into place when complete, so a crash never leaves a half-written split;
a complete split with the same parameters is skipped, one written by an older generator version
is regenerated.

Image ``i`` of a split depends only on ``(seed, i)``: the evaluation layouts generated with the
same seed show the same scenes (e.g. ``semseg/test`` and ``captions/test`` are one set of
images); an image_text split with that seed shows them too, except its one-object scenes, whose
radius comes from ``single_object_radius`` (default
:data:`~.meta.TRAINING_SINGLE_OBJECT_RADIUS`, 0.10-0.30 of the width, against the evaluation
scenes' 0.23-0.30).

The splits the quickstart needs, and their seeds: :mod:`.presets`.
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
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .captions import evaluation_caption, training_caption
from .meta import (
    DEFAULT_BACKGROUND_THRESHOLD, GENERATOR_VERSION, IGNORE_LABEL, LAYOUTS, META_FILE, TRAINING_SINGLE_OBJECT_RADIUS,
    is_complete, is_outdated, read_meta, resolve_single_object_radius, same_split, split_dir, split_meta,
)
from .render import MIN_IMAGE_SIZE, caption_mask, image_rngs, render_scene, semantic_label

__all__ = [
    "GENERATOR_VERSION",
    "LAYOUTS",
    "TRAINING_SINGLE_OBJECT_RADIUS",
    "DEFAULT_BACKGROUND_THRESHOLD",
    "IGNORE_LABEL",
    "META_FILE",
    "split_dir",
    "read_meta",
    "is_complete",
    "generate",
]

logger = logging.getLogger(__name__)

MIN_IMAGES_FOR_POOL = 2000  # below this, starting worker processes costs more than it saves
# zlib level 1, and no PNG row filter where OpenCV lets us choose (4.11+): these flat-colour
# scenes compress as well without the filters (6.2 against 6.3 KB per 128 px image) and decode
# about a third faster (0.12 against 0.19 ms with OpenCV), the largest cost of a loader worker in
# the tiny CLIP's pretraining (benchmarks/README.md). Lossless either way: the same pixels.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


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
            caption = evaluation_caption(scene.objects, caption_rng)
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
        image_size: side of the square images, pixels (at least ``render.MIN_IMAGE_SIZE``).
        workers: processes for rendering; 0 or 1 (or fewer than ``MIN_IMAGES_FOR_POOL``
            images) renders in this process. Workers are started with "spawn": a script
            calling this with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard.
        overwrite: replace an existing split whose parameters differ (otherwise an error).
        omit_prob, replace_prob: noise of the training captions (image_text layout only).
        single_object_radius: (low, high) radius range, in fractions of the width, of scenes
            with one object (image_text layout only; None = :data:`TRAINING_SINGLE_OBJECT_RADIUS`,
            0.10-0.30: every class word is then named for small objects too). Recorded in
            ``meta.json``. (0.23, 0.30), the dominant range, reproduces the image_text splits of
            generator version 1 (the shipped tiny CLIP's pretraining data, checkpoints/README.md).
        chunk_size: images per rendering task.
        progress: called with the number of images finished, after every chunk.

    Returns:
        the split folder. A complete split with the same parameters is left as it is; a split
        written by an older generator version (:mod:`.meta`) is regenerated.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not _SPLIT_NAME.match(split):
        raise ValueError(f"bad split name {split!r}: use letters, digits, '_' and '-'")
    if num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size {image_size}: must be at least {MIN_IMAGE_SIZE} (smaller scenes lose their objects)")
    target = split_dir(root, layout, split)
    single_object_radius = resolve_single_object_radius(layout, single_object_radius)
    expected = split_meta(layout, split, seed, num_images, image_size, omit_prob, replace_prob, single_object_radius)
    if target.exists():
        existing = read_meta(target)
        if same_split(existing, expected):
            logger.info("%s is complete, skipping", target)
            return target
        if is_outdated(existing):
            logger.warning("%s was written by generator version %s; regenerating it with version %d (what changed: "
                           "ttd_d2/data/synthetic/meta.py)", target, existing["generator_version"], GENERATOR_VERSION)
        elif not overwrite:
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
