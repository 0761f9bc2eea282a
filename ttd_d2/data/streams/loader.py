"""The training loader of streamed sources: ``DATASETS.TRAIN``'s shard sources and
``DATASETS.IMAGE_TEXT.SHARDS``, mixed, through detectron2's ``build_detection_train_loader``."""
import json
from typing import Callable, Dict, List, Optional, Tuple

from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.utils import comm

from ...config_checks_streams import FOLDERS_WITH_SHARDS
from ..collate import packed_batch_collator
from ..datasets.image_text import is_shard_source
from .shards import MixedStream, ShardStream, expand_shards
from .skips import SkipCountingLoader

__all__ = ["uses_streams", "stream_sources", "read_keep_list", "keep_lists", "build_stream_loader"]


def uses_streams(cfg) -> bool:
    """Whether the config trains on streamed sources (then only on them)."""
    return bool(cfg.DATASETS.IMAGE_TEXT.SHARDS) or any(is_shard_source(n) for n in cfg.DATASETS.TRAIN)


def stream_sources(cfg) -> List[Tuple[str, List[str]]]:
    """(name, shard patterns) of every streamed source, DATASETS.TRAIN's then SHARDS'."""
    if cfg.DATASETS.IMAGE_TEXT.FOLDERS:
        raise ValueError(FOLDERS_WITH_SHARDS)
    listed = [n for n in cfg.DATASETS.TRAIN if not is_shard_source(n)]
    if listed:
        raise ValueError(f"DATASETS.TRAIN mixes shard sources with record datasets ({', '.join(listed)}): train on "
                         "one kind (write the records as shards, or drop the shard sources)")
    sources = [(n, list(MetadataCatalog.get(n).shards)) for n in cfg.DATASETS.TRAIN]
    sources += [(f"DATASETS.IMAGE_TEXT.SHARDS[{i}]", [p]) for i, p in enumerate(cfg.DATASETS.IMAGE_TEXT.SHARDS)]
    return sources


def read_keep_list(path: str) -> frozenset:
    """The sample keys of a keep-list: one per line (blank lines and ``#`` comments skipped), or
    a JSON object whose ``"keys"`` is a list of them."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("{"):
        try:
            keys = json.loads(text)["keys"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"keep-list '{path}': a JSON keep-list must be an object with a \"keys\" list ({e})") from e
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"keep-list '{path}': \"keys\" must be a list of strings")
    else:
        keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ValueError(f"keep-list '{path}' keeps no sample")
    return frozenset(keys)


def keep_lists(cfg, num_sources: int) -> List[Optional[frozenset]]:
    """``DATASETS.IMAGE_TEXT.KEEP_LISTS`` read, one key set per source (None: not pruned)."""
    paths = list(cfg.DATASETS.IMAGE_TEXT.KEEP_LISTS)
    if not paths:
        return [None] * num_sources
    if len(paths) != num_sources:
        raise ValueError(f"DATASETS.IMAGE_TEXT.KEEP_LISTS has {len(paths)} files for {num_sources} sources: give one "
                         "per source ('' for a source not pruned)")
    return [read_keep_list(p) if p else None for p in paths]


def build_stream_loader(cfg, mapper: Callable[[Dict], Optional[Dict]]) -> SkipCountingLoader:
    """Batches of ``SOLVER.IMS_PER_BATCH / world size`` mapped samples per rank, from
    ``DATALOADER.NUM_WORKERS`` workers, each reading shards of its own (:class:`ShardStream`);
    the skipped samples are counted by the returned :class:`SkipCountingLoader`."""
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()  # every rank must permute the shards alike
    options = dict(seed=seed, shuffle_buffer=cfg.DATASETS.IMAGE_TEXT.SHUFFLE_BUFFER,
                   rank=comm.get_rank(), world_size=comm.get_world_size())
    sources = stream_sources(cfg)
    streams = [ShardStream(expand_shards(p), mapper, name=name, keep=keep, **options)
               for (name, p), keep in zip(sources, keep_lists(cfg, len(sources)))]
    weights = list(cfg.DATASETS.IMAGE_TEXT.WEIGHTS) or [len(s.shards) for s in streams]
    if len(weights) != len(streams):
        raise ValueError(f"DATASETS.IMAGE_TEXT.WEIGHTS has {len(weights)} weights for {len(streams)} sources "
                         f"({', '.join(s.name for s in streams)})")
    dataset = streams[0] if len(streams) == 1 else MixedStream(streams, weights, seed)
    collate = packed_batch_collator if cfg.DATALOADER.PACKED_BATCHES else None  # None: detectron2's trivial one
    loader = build_detection_train_loader(dataset, mapper=None, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
                                          aspect_ratio_grouping=False, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                          collate_fn=collate)
    return SkipCountingLoader(loader, dataset, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
