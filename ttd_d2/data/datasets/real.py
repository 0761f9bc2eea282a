"""Registration of the real benchmarks (``docs/DATASETS.md``) at import, from
``$DETECTRON2_DATASETS``: names are registered whether or not the data is there (reading a
missing one raises ``FileNotFoundError`` naming the prepare command). Import never fails."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Union

from .ade20k import ADE20K_BENCHMARKS
from .benchmark import register_benchmarks
from .cityscapes import CITYSCAPES_BENCHMARKS
from .coco import COCO_BENCHMARKS
from .pascal_context import CONTEXT_BENCHMARKS
from .voc import VOC_BENCHMARKS

__all__ = ["REAL_BENCHMARKS", "register_real_benchmarks"]

logger = logging.getLogger(__name__)
REAL_BENCHMARKS = (*VOC_BENCHMARKS, *CONTEXT_BENCHMARKS, *COCO_BENCHMARKS, *CITYSCAPES_BENCHMARKS,
                   *ADE20K_BENCHMARKS)


def register_real_benchmarks(datasets_root: Optional[Union[str, Path]] = None) -> List[str]:
    """Register every real benchmark under ``datasets_root`` (default ``$DETECTRON2_DATASETS``)."""
    return register_benchmarks(REAL_BENCHMARKS, datasets_root)


try:
    register_real_benchmarks()
except Exception:  # registration must never break `import ttd_d2`
    logger.warning("could not register the real benchmarks", exc_info=True)
