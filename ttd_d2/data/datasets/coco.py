"""COCO-Stuff-164k val (171 classes) and COCO-Object val (80 things + background).

Official layout under ``$DETECTRON2_DATASETS`` (``val2017.zip``, ``stuffthingmaps_trainval2017.zip``)::

    coco/val2017/<id>.jpg
    coco/stuffthingmaps_trainval2017/val2017/<id>.png   value = COCO category id - 1, 255 unlabeled

:func:`prepare_coco` writes ``coco/ttd_labels/stuff171_val2017`` (the 171 used ids in id order:
80 things then 91 stuff, contiguous 0-170) and ``coco/ttd_labels/object81_val2017`` (0 background
= every stuff class, 1-80 things, 255 unlabeled).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

from .benchmark import Benchmark, datasets_root
from .label_conversion import apply_table, convert_files, lookup_table, read_label, require_input

__all__ = ["COCO_BENCHMARKS", "COCO_THING_IDS", "COCO_STUFF_IDS", "prepare_coco"]

_PREPARE = "python tools/prepare_coco.py"
COCO_BENCHMARKS = (
    Benchmark("ttd_coco_stuff171_val", "coco/val2017", "coco/ttd_labels/stuff171_val2017",
              "coco_stuff171.txt", _PREPARE),
    Benchmark("ttd_coco_object_val", "coco/val2017", "coco/ttd_labels/object81_val2017",
              "coco_object80.txt", _PREPARE, background=True, background_threshold=0.45),
)
_UNUSED_THING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # ids COCO 2017 skips
COCO_THING_IDS = [i for i in range(1, 91) if i not in _UNUSED_THING_IDS]  # 80
COCO_STUFF_IDS = list(range(92, 183))  # 91
TABLE_171 = lookup_table({cid - 1: k for k, cid in enumerate(COCO_THING_IDS + COCO_STUFF_IDS)}, 255, 256)
TABLE_81 = lookup_table({**{cid - 1: 0 for cid in COCO_STUFF_IDS},
                         **{cid - 1: k + 1 for k, cid in enumerate(COCO_THING_IDS)}}, 255, 256)


def prepare_coco(root: Optional[Union[str, Path]] = None) -> Dict[str, Dict[str, int]]:
    """Convert the val2017 stuffthingmaps under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    base = datasets_root(root) / "coco"
    maps = require_input(base / "stuffthingmaps_trainval2017/val2017", "the COCO-Stuff val2017 stuffthingmaps")
    sources = sorted(maps.glob("*.png"))
    if not sources:
        raise FileNotFoundError(f"no PNG maps in {maps}")
    out = {}
    for name, table in (("stuff171_val2017", TABLE_171), ("object81_val2017", TABLE_81)):
        jobs = [(s, base / "ttd_labels" / name / s.name) for s in sources]
        out[name] = convert_files(jobs, lambda s, t=table: apply_table(read_label(s), t), f"COCO {name}")
    return out
