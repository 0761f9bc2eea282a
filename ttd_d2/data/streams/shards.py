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
import json
import logging
import os
import tarfile
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


def worker_batches(iterations: int, worker: int, workers: int) -> int:
    """Batches loader ``worker`` (of ``workers``; 0 = the main process) produced for the first
    ``iterations`` steps: torch's DataLoader takes an iterable dataset's batches from its workers
    in turn."""
    if workers <= 1:
        return iterations
    return max(0, -(-(iterations - worker) // workers))


def shard_size(shard: str) -> int:
    """Samples in a shard: img2dataset's ``<shard>_stats.json`` "successes" when it is there,
    else the distinct keys of the tar's members (a scan of the headers only)."""
    stats = os.path.splitext(shard)[0] + "_stats.json"
    if os.path.isfile(stats):
        try:
            with open(stats, encoding="utf-8") as f:
                return int(json.load(f)["successes"])
        except (ValueError, KeyError, TypeError, OSError):
            pass
    try:
        with tarfile.open(shard) as tar:
            return len({m.name.split(".", 1)[0] for m in tar if m.isreg() and not m.name.startswith("__")})
    except (OSError, tarfile.TarError):
        return 0  # unreadable: read (and counted as a shard error) like any other shard


class _Consumed:
    """``(worker, workers) ->`` samples that process yielded in ``iterations`` steps of
    ``batch_size`` (a class, not a closure: loader workers may be spawned, which pickles it)."""

    def __init__(self, iterations: int, batch_size: int):
        self.iterations, self.batch_size = iterations, batch_size

    def __call__(self, worker: int, workers: int) -> int:
        return worker_batches(self.iterations, worker, workers) * self.batch_size


class _MixtureShare:
    """The samples stream ``index`` of a :class:`MixedStream` gave to a process: its draws replayed."""

    def __init__(self, mixture: "MixedStream", index: int, consumed: _Consumed):
        self.seed, self.rank, self.weights = mixture.seed, mixture.streams[0].rank, mixture.weights
        self.index, self.consumed = index, consumed

    def __call__(self, worker: int, workers: int) -> int:
        rng = mixture_rng(self.seed, self.rank, worker)
        draws = rng.choices(range(len(self.weights)), weights=self.weights, k=self.consumed(worker, workers))
        return draws.count(self.index)


def mixture_rng(seed: int, rank: int, worker: int) -> random.Random:
    return random.Random(f"{seed}/mix/{rank}/{worker}")  # str seeds hash with sha512: stable across runs


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
        self._skip: Callable[[int, int], int] = _Consumed(0, 0)

    def resume(self, iterations: int, batch_size: int) -> None:
        """Continue after ``iterations`` steps of ``batch_size`` samples per rank (call before
        iterating): each process skips the samples it had yielded (:meth:`set_skip`)."""
        self.set_skip(_Consumed(iterations, batch_size))

    def set_skip(self, skip: Callable[[int, int], int]) -> None:
        """``skip(worker, workers)``: samples that process skips at the start of its stream. Whole
        epochs and whole shards are skipped by their sizes (:func:`shard_size`, no reading), the
        rest record by record (read and decoded: at most one shard per process). Sizes count the
        samples at write time, bad ones included, and the shuffle buffer reorders, so a resumed
        stream re-reads or leaves out up to about ``shuffle_buffer`` samples plus the bad ones of
        the skipped shards (none without a buffer and bad samples)."""
        self._skip = skip

    def _start(self, worker: int, workers: int) -> Tuple[int, int, int]:
        """(epoch, shards to skip in it, records to skip after them) for this process."""
        remaining, epoch = self._skip(worker, workers), 0
        sizes: Dict[str, int] = {}
        while remaining > 0:
            shards = self.epoch_shards(epoch, worker, workers)
            for s in shards:
                sizes.setdefault(s, shard_size(s))
            total = sum(sizes[s] for s in shards)
            if total == 0 or remaining < total:
                break
            remaining -= total
            epoch += 1
        if remaining <= 0:
            return epoch, 0, 0
        skipped_shards = 0
        for s in self.epoch_shards(epoch, worker, workers):
            if sizes[s] > remaining:
                break
            remaining -= sizes[s]
            skipped_shards += 1
        return epoch, skipped_shards, remaining

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
        epoch, skip_shards, skip_records = self._start(worker, workers)
        while True:
            shards = self.epoch_shards(epoch, worker, workers)
            rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{worker}")  # str seeds hash with sha512: stable
            records = self._records(shards[skip_shards:], skipped)
            while skip_records > 0:  # decoded as when they were yielded: a corrupt image was not one of them
                record = next(records, None)
                if record is None:
                    break
                if self.mapper(record) is None:
                    skipped["corrupt_image"] += 1
                else:
                    skip_records -= 1
            skip_shards = skip_records = 0
            yielded = 0
            for record in self._shuffled(records, rng):
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
        self._skip: Callable[[int, int], int] = _Consumed(0, 0)

    def _draw(self, rng: random.Random) -> int:
        return rng.choices(range(len(self.streams)), weights=self.weights)[0]

    def resume(self, iterations: int, batch_size: int) -> None:
        """As :meth:`ShardStream.resume`: the mixture's draws are replayed to split each
        process's yielded samples among the streams."""
        self._skip = _Consumed(iterations, batch_size)
        for i, stream in enumerate(self.streams):
            stream.set_skip(_MixtureShare(self, i, self._skip))

    def __iter__(self) -> Iterator[Dict]:
        worker, workers = process_slot()
        rng = mixture_rng(self.seed, self.streams[0].rank, worker)
        rng.choices(range(len(self.streams)), weights=self.weights, k=self._skip(worker, workers))  # draws made before a resume
        iterators = [iter(s) for s in self.streams]
        while True:
            yield next(iterators[self._draw(rng)])
