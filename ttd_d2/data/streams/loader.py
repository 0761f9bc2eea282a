"""The training loader of streamed sources: ``DATASETS.TRAIN``'s shard sources and
``DATASETS.IMAGE_TEXT.SHARDS``, mixed, through detectron2's ``build_detection_train_loader``."""
from typing import Callable, Dict, List, Optional, Tuple

from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.utils import comm

from ..datasets.image_text import is_shard_source
from .shards import MixedStream, ShardStream, expand_shards
from .skips import SkipCountingLoader

__all__ = ["uses_streams", "stream_sources", "build_stream_loader"]


def uses_streams(cfg) -> bool:
    """Whether the config trains on streamed sources (then only on them)."""
    return bool(cfg.DATASETS.IMAGE_TEXT.SHARDS) or any(is_shard_source(n) for n in cfg.DATASETS.TRAIN)


def stream_sources(cfg) -> List[Tuple[str, List[str]]]:
    """(name, shard patterns) of every streamed source, DATASETS.TRAIN's then SHARDS'."""
    listed = [n for n in cfg.DATASETS.TRAIN if not is_shard_source(n)]
    if listed:
        raise ValueError(f"DATASETS.TRAIN mixes shard sources with record datasets ({', '.join(listed)}): train on "
                         "one kind (write the records as shards, or drop the shard sources)")
    sources = [(n, list(MetadataCatalog.get(n).shards)) for n in cfg.DATASETS.TRAIN]
    sources += [(f"DATASETS.IMAGE_TEXT.SHARDS[{i}]", [p]) for i, p in enumerate(cfg.DATASETS.IMAGE_TEXT.SHARDS)]
    return sources


def build_stream_loader(cfg, mapper: Callable[[Dict], Optional[Dict]]) -> SkipCountingLoader:
    """Batches of ``SOLVER.IMS_PER_BATCH / world size`` mapped samples per rank, from
    ``DATALOADER.NUM_WORKERS`` workers, each reading shards of its own (:class:`ShardStream`);
    the skipped samples are counted by the returned :class:`SkipCountingLoader`."""
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()  # every rank must permute the shards alike
    options = dict(seed=seed, shuffle_buffer=cfg.DATASETS.IMAGE_TEXT.SHUFFLE_BUFFER,
                   rank=comm.get_rank(), world_size=comm.get_world_size())
    streams = [ShardStream(expand_shards(p), mapper, name=name, **options) for name, p in stream_sources(cfg)]
    weights = list(cfg.DATASETS.IMAGE_TEXT.WEIGHTS) or [len(s.shards) for s in streams]
    if len(weights) != len(streams):
        raise ValueError(f"DATASETS.IMAGE_TEXT.WEIGHTS has {len(weights)} weights for {len(streams)} sources "
                         f"({', '.join(s.name for s in streams)})")
    dataset = streams[0] if len(streams) == 1 else MixedStream(streams, weights, seed)
    loader = build_detection_train_loader(dataset, mapper=None, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
                                          aspect_ratio_grouping=False, num_workers=cfg.DATALOADER.NUM_WORKERS)
    return SkipCountingLoader(loader)
