"""ADE20K val: 150 classes (SceneParsing ``ADEChallengeData2016.zip``) and 847 (the full
release ``ADE20K_2021_17_01.zip``).

Official layouts under ``$DETECTRON2_DATASETS``::

    ADEChallengeData2016/images/validation/ADE_val_<n>.jpg
    ADEChallengeData2016/annotations/validation/ADE_val_<n>.png   0 = other, 1-150 = classes

    ADE20K_2021_17_01/index_ade20k.pkl          dict; "objectnames": the release's class names
    ADE20K_2021_17_01/images/ADE/validation/<scene folders>/ADE_val_<n>.jpg
    ADE20K_2021_17_01/images/ADE/validation/<scene folders>/ADE_val_<n>_seg.png
        RGB; class = R // 10 * 256 + G, 1-based into objectnames (0 unlabeled)

:func:`prepare_ade20k_150` writes ``ADEChallengeData2016/ttd_labels/validation150`` (0-149,
"other" -> 255). :func:`prepare_ade20k_847` needs the benchmark's selection of 847 classes
(a text file, one ``objectnames`` entry a line, in label order; not shipped, see
datasets/README.md) and writes ``ADE20K_2021_17_01/ttd_labels/validation847/<scene folders>/``
(16-bit, 0-846, others 65535) and ``classes847.txt``.
"""
from __future__ import annotations

from pathlib import Path
import pickle
from typing import Dict, List, Optional, Union

import numpy as np
from PIL import Image

from .benchmark import IGNORE_16BIT, Benchmark, datasets_root, read_class_names
from .label_conversion import (apply_table, convert_files, lookup_table, read_label, require_input,
                               write_text_atomic)

__all__ = ["ADE20K_BENCHMARKS", "ade_full_classes", "prepare_ade20k_150", "prepare_ade20k_847"]

_BASE = "ADEChallengeData2016"
ADE20K_BENCHMARKS = (
    Benchmark("ttd_ade150_val", f"{_BASE}/images/validation", f"{_BASE}/ttd_labels/validation150",
              "ade150.txt", "python tools/prepare_ade20k.py"),
    Benchmark("ttd_ade847_val", "ADE20K_2021_17_01/images/ADE/validation",
              "ADE20K_2021_17_01/ttd_labels/validation847", "ADE20K_2021_17_01/ttd_labels/classes847.txt",
              "python tools/prepare_ade20k.py --full-classes FILE", ignore_label=IGNORE_16BIT, image_suffix=".jpg"),
)
_FULL = "ADE20K_2021_17_01"
TABLE_150 = lookup_table({k: k - 1 for k in range(1, 151)}, 255, 256)


def prepare_ade20k_150(root: Optional[Union[str, Path]] = None) -> Dict[str, int]:
    """Convert the validation annotations under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    base = datasets_root(root) / _BASE
    annotations = require_input(base / "annotations/validation", "the ADE20K validation annotations")
    jobs = [(s, base / "ttd_labels/validation150" / s.name) for s in sorted(annotations.glob("*.png"))]
    if not jobs:
        raise FileNotFoundError(f"no PNG annotations in {annotations}")
    return convert_files(jobs, lambda s: apply_table(read_label(s), TABLE_150), "ADE20K-150")


def ade_full_classes(rgb: np.ndarray) -> np.ndarray:
    """Class indices [H, W] of a full-release ``_seg.png`` [H, W, 3]: R // 10 * 256 + G."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] // 10 * 256 + rgb[..., 1]


def _read_seg(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return ade_full_classes(np.array(image.convert("RGB")))


def _object_names(base: Path) -> List[str]:
    index = require_input(base / "index_ade20k.pkl", "the ADE20K full release's index_ade20k.pkl")
    with open(index, "rb") as f:
        names = pickle.load(f)["objectnames"]  # the official release's own index file
    return [str(n) for n in names]


def prepare_ade20k_847(classes_file: Union[str, Path], root: Optional[Union[str, Path]] = None) -> Dict[str, int]:
    """Convert the full release's validation ``_seg.png`` files to the 847 classes listed (one
    ``objectnames`` entry a line) in ``classes_file``."""
    base = datasets_root(root) / _FULL
    selection = read_class_names(classes_file)
    if len(selection) != 847:
        raise ValueError(f"{classes_file} has {len(selection)} classes, expected 847")
    names = _object_names(base)
    missing = [n for n in selection if n not in names]
    if missing:
        raise ValueError(f"{classes_file}: names not in index_ade20k.pkl's objectnames: {missing[:5]}")
    table = lookup_table({names.index(n) + 1: k for k, n in enumerate(selection)}, IGNORE_16BIT)
    images = require_input(base / "images/ADE/validation", "the ADE20K full release's validation images")
    jobs = []
    for seg in sorted(images.rglob("ADE_val_*_seg.png")):
        relative = seg.relative_to(images).parent / f"{seg.name[: -len('_seg.png')]}.png"
        jobs.append((seg, base / "ttd_labels/validation847" / relative))
    if not jobs:
        raise FileNotFoundError(f"no ADE_val_*_seg.png files under {images}")
    out = convert_files(jobs, lambda s: apply_table(_read_seg(s), table), "ADE20K-847")
    write_text_atomic(base / "ttd_labels/classes847.txt", "".join(f"{n}\n" for n in selection))
    return out
