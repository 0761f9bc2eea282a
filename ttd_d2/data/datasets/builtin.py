"""Registration of the synthetic benchmark under ``$DETECTRON2_DATASETS/synthetic``.

Importing this module registers, without reading any records:
- every split found under the root, if the root exists;
- the quickstart splits (``tools/generate_synthetic.py --preset quickstart``) in any case, so
  that ``DatasetCatalog.get("synth_semseg_test")`` on a machine without the data raises a
  ``FileNotFoundError`` naming the command that generates it, rather than a KeyError.
- ``cc3m_tagmask`` (``$DETECTRON2_DATASETS/cc3m_tagmask``, docs/CC3M_TAGMASK.md), read on use.
Import never fails: an unexpected error is logged.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Union

from ..synthetic.presets import quickstart_splits
from .cc3m_tagmask import register_cc3m_tagmask
from .synthetic import register_synthetic, register_synthetic_split, require_split_dir

__all__ = ["synthetic_root", "register_builtin_synthetic", "require_synthetic_dataset"]

logger = logging.getLogger(__name__)


def synthetic_root(datasets_root: Optional[Union[str, Path]] = None) -> Path:
    """``<datasets_root>/synthetic``; ``datasets_root`` defaults to ``$DETECTRON2_DATASETS``,
    else ``datasets``."""
    if datasets_root is None:
        datasets_root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return Path(datasets_root) / "synthetic"


def require_synthetic_dataset(layout: str, split: str, datasets_root: Optional[Union[str, Path]] = None) -> Path:
    """The split folder under :func:`synthetic_root`, or ``FileNotFoundError`` naming
    ``tools/generate_synthetic.py`` and ``DETECTRON2_DATASETS``."""
    return require_split_dir(synthetic_root(datasets_root), layout, split)


def register_builtin_synthetic(datasets_root: Optional[Union[str, Path]] = None) -> List[str]:
    """Register the splits found under :func:`synthetic_root` and the quickstart splits.

    Returns:
        the names this call registered.
    """
    root = synthetic_root(datasets_root)
    names = register_synthetic(root) if root.is_dir() else []
    for spec in quickstart_splits():
        name = register_synthetic_split(root, spec.layout, spec.split)
        if name is not None:
            names.append(name)
    return names


try:
    register_builtin_synthetic()
except Exception:  # registration must never break `import ttd_d2`
    logger.warning("could not register the synthetic datasets", exc_info=True)
try:
    register_cc3m_tagmask()  # reads nothing until used: $DETECTRON2_DATASETS/cc3m_tagmask
except Exception:  # registration must never break `import ttd_d2`
    logger.warning("could not register cc3m_tagmask", exc_info=True)
