"""Cityscapes val, 19 classes (``gtFine_trainvaltest.zip``, ``leftImg8bit_trainvaltest.zip``).

Official layout under ``$DETECTRON2_DATASETS``::

    cityscapes/leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    cityscapes/gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   34 label ids

:func:`prepare_cityscapes` writes ``cityscapes/ttd_labels/val19/<city>/<city>_<seq>_<frame>.png``
with the 19 train ids of the official ``cityscapesscripts`` label table (others 255).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

from .benchmark import Benchmark, datasets_root
from .label_conversion import apply_table, convert_files, lookup_table, read_label, require_input

__all__ = ["CITYSCAPES_BENCHMARKS", "LABEL_ID_TO_TRAIN_ID", "prepare_cityscapes"]

CITYSCAPES_BENCHMARKS = (
    Benchmark("ttd_cityscapes19_val", "cityscapes/leftImg8bit/val", "cityscapes/ttd_labels/val19",
              "cityscapes19.txt", "python tools/prepare_cityscapes.py", image_suffix="_leftImg8bit.png"),
)
# label id -> train id of the 19 evaluated classes (road ... bicycle), as in cityscapesscripts' labels.py
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
TABLE_19 = lookup_table(LABEL_ID_TO_TRAIN_ID, 255, 256)
_GT_SUFFIX = "_gtFine_labelIds.png"


def prepare_cityscapes(root: Optional[Union[str, Path]] = None) -> Dict[str, int]:
    """Convert the val labelIds under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    base = datasets_root(root) / "cityscapes"
    gt = require_input(base / "gtFine/val", "the Cityscapes gtFine val folder")
    jobs = []
    for source in sorted(gt.glob(f"*/*{_GT_SUFFIX}")):
        stem = source.name[: -len(_GT_SUFFIX)]
        jobs.append((source, base / "ttd_labels/val19" / source.parent.name / f"{stem}.png"))
    if not jobs:
        raise FileNotFoundError(f"no <city>/*{_GT_SUFFIX} files in {gt}")
    return convert_files(jobs, lambda s: apply_table(read_label(s), TABLE_19), "Cityscapes val19")
