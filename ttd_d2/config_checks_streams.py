"""Config checks of the streamed image-text sources (``DATASETS.IMAGE_TEXT``: ttd_d2/data/streams);
``config_checks.py`` calls them."""
import math
from typing import List

from .config_checks_values import Problem, number


FOLDERS_WITH_SHARDS = ("DATASETS.IMAGE_TEXT.FOLDERS with shard sources: train on one kind (folders are map-style "
                       "datasets, shards are streamed); write the folders as shards, or drop one")


def stream_problems(stream) -> List[Problem]:
    """``DATASETS.IMAGE_TEXT``: the streamed sources' keys."""
    weights, shards, keep, folders = stream.WEIGHTS, stream.SHARDS, stream.KEEP_LISTS, stream.FOLDERS
    return [
        None if isinstance(folders, (list, tuple)) and all(isinstance(p, str) and p for p in folders) else
        f"DATASETS.IMAGE_TEXT.FOLDERS = {folders!r}: must be a list of folder paths, each holding image/ and json/",
        None if not (folders and shards) else FOLDERS_WITH_SHARDS,
        None if isinstance(keep, (list, tuple)) and all(isinstance(p, str) for p in keep) else
        f"DATASETS.IMAGE_TEXT.KEEP_LISTS = {keep!r}: must be a list of keep-list paths, '' for a source not pruned",
        None if isinstance(shards, (list, tuple)) and all(isinstance(p, str) and p for p in shards) else
        f"DATASETS.IMAGE_TEXT.SHARDS = {shards!r}: must be a list of shard patterns (e.g. ['/data/cc3m/{{00000..00331}}.tar'])",
        None if isinstance(weights, (list, tuple)) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0 for w in weights) else
        f"DATASETS.IMAGE_TEXT.WEIGHTS = {weights!r}: must be positive numbers, one per source, or [] (by shard counts)",
        number("DATASETS.IMAGE_TEXT.SHUFFLE_BUFFER", stream.SHUFFLE_BUFFER, lambda v: v >= 0, ">= 0", integer=True,
                fix=" (0 = no shuffling inside a process)"),
        number("DATASETS.IMAGE_TEXT.MAX_BAD_FRACTION", stream.MAX_BAD_FRACTION, lambda v: 0 <= v <= 1, "in [0, 1]"),
    ]
