"""Image-text samples streamed from webdataset tar shards: every (rank, loader worker) reads its
own shards, so no two processes read the same sample in an epoch; the order is a function of
the seed; bad samples are skipped and counted.

The tar reading is webdataset's (``tarfile_samples``: it opens local paths, ``pipe:`` commands
and URLs alike); what is ours is the split over processes (webdataset's own node and worker
splitters assume a shard count divisible at every level and know nothing of detectron2's ranks),
the accounting of bad samples, and the keep-list.
"""
from __future__ import annotations

import glob
import logging
import os
import random
from collections import Counter
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from braceexpand import braceexpand
from webdataset.tariterators import tarfile_samples

from .samples import sample_to_record

logger = logging.getLogger(__name__)

__all__ = ["expand_shards", "ShardStream", "MixedStream"]


def expand_shards(patterns: Union[str, Sequence[str]]) -> List[str]:
    """Shard paths from brace patterns (``cc3m/{00000..00331}.tar``) and globs (``cc3m/*.tar``),
    in pattern order, each pattern's matches sorted. Paths that match no file raise one
    ``FileNotFoundError`` naming how many and the first ones (``pipe:`` and URLs are taken as they are)."""
    shards: List[str] = []
    missing: List[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        for path in braceexpand(pattern):
            if "://" in path or path.startswith("pipe:"):
                shards.append(path)
                continue
            found = sorted(glob.glob(path)) if glob.has_magic(path) else ([path] if os.path.isfile(path) else [])
            shards += found
            missing += [] if found else [path]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shard path(s) match no file, e.g. {', '.join(missing[:3])} (patterns {list(patterns) if not isinstance(patterns, str) else patterns}): "
            "check the paths, or write the shards with img2dataset --output_format webdataset (docs/DATASETS.md)")
    return shards


def process_slot() -> Tuple[int, int]:
    """(this loader worker's id, the number of workers): (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardStream(torch.utils.data.IterableDataset):
    """An endless stream of mapped image-caption samples from tar shards.

    Epoch ``e`` permutes the shards with ``(seed, e)``; process ``p = rank * workers + worker``
    of ``world * workers`` reads the permuted shards ``p, p + world * workers, ...``, so the
    processes' shards are disjoint. Inside a process, records pass a shuffle buffer
    (``shuffle_buffer`` records, seeded by ``(seed, e, p)``) before ``mapper`` decodes them, so
    the buffer holds compressed images. Each yielded sample carries ``"skipped"``: the bad samples
    (by kind, :data:`~.samples.BAD_KINDS`) and the samples left out by the keep-list
    (``"not_kept"``) met since the previous one, which :class:`~.skips.SkipCountingLoader` sums.
    """

    def __init__(
        self,
        shards: Sequence[str],
        mapper: Callable[[Dict], Optional[Dict]],
        *,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        keep: Optional[frozenset] = None,
        rank: int = 0,
        world_size: int = 1,
        name: str = "shards",
    ):
        if not shards:
            raise ValueError(f"{name}: no shards to read")
        self.shards, self.mapper, self.seed = list(shards), mapper, int(seed)
        self.shuffle_buffer, self.keep, self.name = int(shuffle_buffer), keep, name
        self.rank, self.world_size = rank, world_size

    def epoch_shards(self, epoch: int, worker: int, workers: int) -> List[str]:
        """The shards this rank's ``worker`` (of ``workers``) reads in ``epoch``."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        slots = self.world_size * workers
        if len(self.shards) < slots:
            raise ValueError(
                f"{self.name}: {len(self.shards)} shards for {self.world_size} ranks x {workers} loader workers: every "
                "process needs a shard of its own. Write more, smaller shards, or lower DATALOADER.NUM_WORKERS")
        return [self.shards[i] for i in order[self.rank * workers + worker::slots]]

    def _records(self, shards: Sequence[str], skipped: Counter) -> Iterator[Dict]:
        for shard in shards:
            errors = []

            def on_error(exn: Exception) -> bool:
                errors.append(exn)
                return True  # webdataset goes on: with the next member, or past the shard's end

            for sample in tarfile_samples([{"url": shard}], handler=on_error):
                record, problem = sample_to_record(sample)
                if problem is not None:
                    skipped[problem] += 1
                elif self.keep is not None and record["key"] not in self.keep:
                    skipped["not_kept"] += 1
                else:
                    yield record
            if errors:  # one count per shard: a truncated stream raises once per member read and once at its end
                skipped["shard_error"] += 1
                logger.warning("%s: %s is unreadable from some point on (%s); its remaining samples are skipped",
                               self.name, shard, errors[0])

    def _shuffled(self, records: Iterator[Dict], rng: random.Random) -> Iterator[Dict]:
        if self.shuffle_buffer <= 1:
            yield from records
            return
        buffer: List[Dict] = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], record = record, buffer[i]
            yield record
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[Dict]:
        worker, workers = process_slot()
        skipped: Counter = Counter()
        epoch = 0
        while True:
            shards = self.epoch_shards(epoch, worker, workers)
            rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{worker}")  # str seeds hash with sha512: stable
            yielded = 0
            for record in self._shuffled(self._records(shards, skipped), rng):
                sample = self.mapper(record)
                if sample is None:
                    skipped["corrupt_image"] += 1
                    continue
                sample["skipped"] = dict(skipped)
                skipped.clear()
                yielded += 1
                yield sample
            if yielded == 0:
                raise RuntimeError(f"{self.name}: not one usable sample in the {len(shards)} shards of rank {self.rank}, "
                                   f"loader worker {worker} (skipped: {dict(skipped)}); first shard: {shards[0]}")
            epoch += 1


class MixedStream(torch.utils.data.IterableDataset):
    """Several streams mixed with weights: each sample comes from stream ``i`` with probability
    ``weights[i] / sum(weights)``, drawn per process with ``(seed, rank, worker)``; each stream
    keeps its own split over processes."""

    def __init__(self, streams: Sequence[ShardStream], weights: Sequence[float], seed: int = 0):
        if len(streams) != len(weights) or not streams or any(not w > 0 for w in weights):
            raise ValueError(f"one positive weight per stream needed: {len(streams)} streams, weights {list(weights)}")
        self.streams, self.weights, self.seed = list(streams), [float(w) for w in weights], int(seed)

    def __iter__(self) -> Iterator[Dict]:
        worker, _ = process_slot()
        rank = self.streams[0].rank
        rng = random.Random(f"{self.seed}/mix/{rank}/{worker}")
        iterators = [iter(s) for s in self.streams]
        while True:
            yield next(iterators[rng.choices(range(len(iterators)), weights=self.weights)[0]])
