"""PASCAL VOC 2012 val: 21 classes (background 0) and 20 (background ignored).

Official layout (``VOCtrainval_11-May-2012.tar``) under ``$DETECTRON2_DATASETS``::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png     palette PNG: index = class, 255 = boundary
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt

:func:`prepare_voc` writes ``VOCdevkit/VOC2012/ttd_labels/val21`` (0 background, 1-20 classes,
255 ignore) and ``val20`` (0-19 classes, background and boundary 255).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
from PIL import Image

from .benchmark import Benchmark, datasets_root
from .label_conversion import apply_table, convert_files, lookup_table, read_label, require_input, voc_palette

__all__ = ["VOC_BENCHMARKS", "prepare_voc", "voc_indices"]

_BASE = "VOCdevkit/VOC2012"
_PREPARE = "python tools/prepare_voc.py"
_VAL = f"{_BASE}/ImageSets/Segmentation/val.txt"  # JPEGImages holds the train images too
VOC_BENCHMARKS = (
    Benchmark("ttd_voc21_val", f"{_BASE}/JPEGImages", f"{_BASE}/ttd_labels/val21", "voc20.txt", _PREPARE,
              background=True, background_threshold=0.40, split_list=_VAL),
    Benchmark("ttd_voc20_val", f"{_BASE}/JPEGImages", f"{_BASE}/ttd_labels/val20", "voc20.txt", _PREPARE,
              split_list=_VAL),
)
TABLE_21 = lookup_table({k: k for k in range(21)}, 255, 256)
TABLE_20 = lookup_table({k: k - 1 for k in range(1, 21)}, 255, 256)


def voc_indices(path: Union[str, Path]) -> np.ndarray:
    """Class indices [H, W] uint8 of a SegmentationClass PNG: palette indices as stored, or an
    RGB rendering mapped back through the VOC colour map (unknown colours -> 255)."""
    label = read_label(path) if _is_indexed(path) else _rgb_to_index(path)
    return label.astype(np.uint8)


def _is_indexed(path) -> bool:
    with Image.open(path) as image:
        return image.mode in ("P", "L")


def _rgb_to_index(path) -> np.ndarray:
    with Image.open(path) as image:
        rgb = np.array(image.convert("RGB")).astype(np.int64)
    codes = (voc_palette().astype(np.int64) * [65536, 256, 1]).sum(1)
    table = {int(code): index for index, code in enumerate(codes[:21])}
    table[int(codes[255])] = 255
    colours, inverse = np.unique((rgb * [65536, 256, 1]).sum(2), return_inverse=True)
    indices = np.array([table.get(int(code), 255) for code in colours], dtype=np.uint8)
    return indices[inverse].reshape(rgb.shape[:2])


def prepare_voc(root: Optional[Union[str, Path]] = None) -> Dict[str, Dict[str, int]]:
    """Convert the val labels of the official release under ``root`` (default
    ``$DETECTRON2_DATASETS``); existing outputs are kept."""
    base = datasets_root(root) / _BASE
    ids = require_input(datasets_root(root) / _VAL, "the VOC 2012 val list").read_text().split()
    labels = require_input(base / "SegmentationClass", "the VOC 2012 SegmentationClass folder")
    sources = [require_input(labels / f"{i}.png", "a VOC 2012 val label") for i in ids]
    out = {}
    for name, table in (("val21", TABLE_21), ("val20", TABLE_20)):
        jobs = [(s, base / "ttd_labels" / name / s.name) for s in sources]
        out[name] = convert_files(jobs, lambda s, t=table: apply_table(voc_indices(s), t), f"VOC {name}")
    return out
