"""Gathering per-image statistics of an evaluator onto the main process."""
import itertools
from typing import List, Optional

from detectron2.utils import comm


def gather_on_main(items: List, distributed: bool = True) -> Optional[List]:
    """All processes' ``items`` concatenated on the main process; None on the others.
    Without ``distributed``, the local list itself."""
    if not distributed:
        return items
    comm.synchronize()
    gathered = comm.gather(items, dst=0)
    return list(itertools.chain(*gathered)) if comm.is_main_process() else None
