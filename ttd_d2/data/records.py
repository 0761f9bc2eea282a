"""The training loader of record datasets (map-style: the synthetic image-text splits, the
authors' folder layout, your own registered lists): ``DATASETS.TRAIN``'s datasets plus
``DATASETS.IMAGE_TEXT.FOLDERS``, pruned by ``DATASETS.IMAGE_TEXT.KEEP_LISTS``, through
detectron2's ``build_detection_train_loader``, with its bad samples counted as the shard
streams' are (``streams.SkipCountingLoader``)."""
from collections import Counter
from typing import Callable, Dict, List, Optional

from detectron2.data import build_detection_train_loader
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.utils import comm

from .collate import packed_batch_collator
from .datasets.image_text import LOAD_SKIPPED, folder_source_names
from .streams.loader import keep_lists
from .streams.skips import SkipCountingLoader

__all__ = ["record_sources", "build_record_loader"]


def record_sources(cfg) -> List[str]:
    """Dataset names trained on: ``DATASETS.TRAIN``'s, then those of ``DATASETS.IMAGE_TEXT.FOLDERS``."""
    return list(cfg.DATASETS.TRAIN) + folder_source_names(cfg.DATASETS.IMAGE_TEXT.FOLDERS)


def _kept(name: str, records: List[Dict], keep: Optional[frozenset]) -> List[Dict]:
    """``records`` whose ``image_id`` (a folder record's file stem) is in ``keep`` (None: all)."""
    if keep is None:
        return records
    kept = [r for r in records if str(r.get("image_id")) in keep]
    if not kept:
        raise ValueError(f"{name}: its keep-list keeps none of its {len(records)} records (keys are the records' "
                         "image_id: the file stems of a folder source)")
    return kept


class _CountingMapper:
    """``mapper``, counting the records it skips (None: an unreadable image; detectron2's
    MapDataset then draws another) and handing the count on with the next sample
    (``"skipped"``, which ``SkipCountingLoader`` takes off). One per loader worker (a copy each)."""

    def __init__(self, mapper: Callable[[Dict], Optional[Dict]]):
        self.mapper, self.unreadable = mapper, 0

    def __call__(self, record: Dict) -> Optional[Dict]:
        sample = self.mapper(record)
        if sample is None:
            self.unreadable += 1
        elif self.unreadable:
            sample["skipped"], self.unreadable = {"corrupt_image": self.unreadable}, 0
        return sample


def build_record_loader(cfg, mapper: Callable[[Dict], Optional[Dict]]) -> SkipCountingLoader:
    """Batches of ``SOLVER.IMS_PER_BATCH / world size`` mapped records per rank (detectron2's
    sampler and workers), packed in the workers unless ``DATALOADER.PACKED_BATCHES`` is False.
    Bad samples counted: the pairs folder sources skipped when loaded, the records a keep-list
    leaves out (``not_kept``), both once (rank 0: every rank loads them), and the records the
    mapper skips."""
    names = record_sources(cfg)
    records, skipped = [], Counter()
    for name, keep in zip(names, keep_lists(cfg, len(names))):
        mine = get_detection_dataset_dicts(name)
        kept = _kept(name, mine, keep)
        skipped["not_kept"] += len(mine) - len(kept)
        skipped.update(LOAD_SKIPPED.get(name, {}))
        records += kept
    options = {}
    if cfg.DATALOADER.PACKED_BATCHES:
        # Every training sample is a TRAIN_SIZE square: aspect-ratio grouping has nothing to
        # group, and without it whole batches are collated (packed) in the workers.
        options = {"aspect_ratio_grouping": False, "collate_fn": packed_batch_collator}
    loader = build_detection_train_loader(cfg, mapper=_CountingMapper(mapper), dataset=records, **options)
    return SkipCountingLoader(loader, skipped=skipped if comm.is_main_process() else None)
