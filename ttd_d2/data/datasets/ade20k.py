"""ADE20K val, 150 classes (SceneParsing ``ADEChallengeData2016.zip``).

Official layout under ``$DETECTRON2_DATASETS``::

    ADEChallengeData2016/images/validation/ADE_val_<n>.jpg
    ADEChallengeData2016/annotations/validation/ADE_val_<n>.png   0 = other, 1-150 = classes

:func:`prepare_ade20k_150` writes ``ADEChallengeData2016/ttd_labels/validation150`` (0-149,
"other" -> 255).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

from .benchmark import Benchmark, datasets_root
from .label_conversion import apply_table, convert_files, lookup_table, read_label, require_input

__all__ = ["ADE20K_BENCHMARKS", "prepare_ade20k_150"]

_BASE = "ADEChallengeData2016"
ADE20K_BENCHMARKS = (
    Benchmark("ttd_ade150_val", f"{_BASE}/images/validation", f"{_BASE}/ttd_labels/validation150",
              "ade150.txt", "python tools/prepare_ade20k.py"),
)
TABLE_150 = lookup_table({k: k - 1 for k in range(1, 151)}, 255, 256)


def prepare_ade20k_150(root: Optional[Union[str, Path]] = None) -> Dict[str, int]:
    """Convert the validation annotations under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    base = datasets_root(root) / _BASE
    annotations = require_input(base / "annotations/validation", "the ADE20K validation annotations")
    jobs = [(s, base / "ttd_labels/validation150" / s.name) for s in sorted(annotations.glob("*.png"))]
    if not jobs:
        raise FileNotFoundError(f"no PNG annotations in {annotations}")
    return convert_files(jobs, lambda s: apply_table(read_label(s), TABLE_150), "ADE20K-150")
