"""PASCAL Context val: 459 classes, 59 (others ignored) and 60 (others = background 0).

Official layout under ``$DETECTRON2_DATASETS`` (VOC 2010 ``VOCtrainval_03-May-2010.tar``; the
Context release ``trainval.tar.gz`` with its ``labels.txt`` and ``59_labels.txt``; the val list
of the 5,105 val images, e.g. ``VOC2010/ImageSets/SegmentationContext/val.txt``)::

    VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    pascal_context/trainval/<id>.mat      MATLAB file, "LabelMap": uint16, 1-459 (0 = unlabeled)
    pascal_context/labels.txt             "<k>: <name>" for the 459 classes
    pascal_context/59_labels.txt          "<k>: <name>" for the 59 classes (names of labels.txt)
    pascal_context/val.txt                one image id a line

:func:`prepare_pascal_context` writes under ``pascal_context/ttd_labels/``: ``val459`` (16-bit
PNG, 0-458, unlabeled 65535), ``val59`` (0-58, others 255), ``val60`` (0 background = all
others, 1-59) and ``classes459.txt`` (the release's 459 names, one a line). Reading ``.mat``
needs scipy (``pip install scipy``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from .benchmark import IGNORE_16BIT, Benchmark, datasets_root
from .label_conversion import apply_table, convert_files, lookup_table, require_input, write_text_atomic

__all__ = ["CONTEXT_BENCHMARKS", "context_tables", "parse_label_list", "prepare_pascal_context"]

_IMAGES = "VOCdevkit/VOC2010/JPEGImages"
_LABELS = "pascal_context/ttd_labels"
_PREPARE = "python tools/prepare_pascal_context.py"
_VAL = "pascal_context/val.txt"  # JPEGImages holds VOC 2010's train images too
CONTEXT_BENCHMARKS = (
    Benchmark("ttd_context459_val", _IMAGES, f"{_LABELS}/val459", f"{_LABELS}/classes459.txt", _PREPARE,
              ignore_label=IGNORE_16BIT, split_list=_VAL),
    Benchmark("ttd_context59_val", _IMAGES, f"{_LABELS}/val59", "context59.txt", _PREPARE, split_list=_VAL),
    Benchmark("ttd_context60_val", _IMAGES, f"{_LABELS}/val60", "context59.txt", _PREPARE,
              background=True, background_threshold=0.45, split_list=_VAL),
)


def parse_label_list(path: Path) -> List[str]:
    """Names of a ``"<k>: <name>"`` file, in the order k = 1, 2, ... (checked)."""
    names = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        index, sep, name = line.partition(":")
        if not sep or not index.strip().isdigit() or int(index) != len(names) + 1:
            raise ValueError(f"{path}:{line_no}: expected '{len(names) + 1}: <name>', got {line!r}")
        names.append(name.strip())
    return names


def context_tables(names459: List[str], names59: List[str]) -> Dict[str, np.ndarray]:
    """Tables from LabelMap values (0 unlabeled, k = names459[k-1]) to the three label sets."""
    missing = [n for n in names59 if n not in names459]
    if missing:
        raise ValueError(f"59_labels.txt names not in labels.txt: {missing}")
    to59 = {names459.index(n) + 1: j for j, n in enumerate(names59)}
    size = len(names459) + 1
    return {
        "val459": lookup_table({k: k - 1 for k in range(1, size)}, IGNORE_16BIT, size),
        "val59": lookup_table(to59, 255, size),
        "val60": lookup_table({**{k: 0 for k in range(size)}, **{k: j + 1 for k, j in to59.items()}}, 255, size),
    }


def read_label_map(path: Path) -> np.ndarray:
    """The "LabelMap" of a Context ``.mat`` file."""
    try:
        from scipy.io import loadmat
    except ImportError as error:  # scipy is needed by this prepare step only
        raise ImportError("reading PASCAL Context .mat files needs scipy: pip install scipy") from error
    data = loadmat(str(path))
    if "LabelMap" not in data:
        raise KeyError(f"{path} has no 'LabelMap' (keys: {sorted(k for k in data if not k.startswith('__'))})")
    return np.asarray(data["LabelMap"]).astype(np.int64)


def prepare_pascal_context(root: Optional[Union[str, Path]] = None) -> Dict[str, Dict[str, int]]:
    """Convert the val LabelMaps under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    base = datasets_root(root) / "pascal_context"
    names459 = parse_label_list(require_input(base / "labels.txt", "the Context 459-class labels.txt"))
    names59 = parse_label_list(require_input(base / "59_labels.txt", "the Context 59_labels.txt"))
    if len(names59) != 59:
        raise ValueError(f"{base / '59_labels.txt'} has {len(names59)} classes, expected 59")
    ids = require_input(base / "val.txt", "the Context val image list").read_text().split()
    sources = [require_input(base / "trainval" / f"{i}.mat", "a Context LabelMap") for i in ids]
    out = {}
    for name, table in context_tables(names459, names59).items():
        jobs = [(s, base / "ttd_labels" / name / f"{s.stem}.png") for s in sources]
        out[name] = convert_files(jobs, lambda s, t=table: apply_table(read_label_map(s), t), f"Context {name}")
    write_text_atomic(base / "ttd_labels/classes459.txt", "".join(f"{n}\n" for n in names459))
    return out
