"""Bad samples of a streamed run: summed from the samples' ``"skipped"`` counts, logged to
detectron2's ``EventStorage`` (``data/skipped_<kind>``, totals over all ranks), summarised at the
end, and a stop with a clear error when they pass ``DATASETS.IMAGE_TEXT.MAX_BAD_FRACTION``."""
import logging
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

from .samples import BAD_KINDS

logger = logging.getLogger(__name__)

__all__ = ["SkipCountingLoader", "SkipCountsHook", "TooManyBadSamples"]


class TooManyBadSamples(RuntimeError):
    """More bad samples than ``DATASETS.IMAGE_TEXT.MAX_BAD_FRACTION`` allows."""


class SkipCountingLoader:
    """Wraps a training loader of streamed samples: takes each sample's ``"skipped"`` counts
    off (the model never sees them) and adds them to :attr:`skipped`; :attr:`used` counts the
    samples handed on."""

    def __init__(self, loader: Iterable[List[Dict]], dataset=None, batch_size: int = 0,
                 skipped: Optional[Dict[str, int]] = None):
        self.loader, self.dataset, self.batch_size = loader, dataset, batch_size
        self.skipped: Counter = Counter(skipped or {})  # e.g. the pairs a folder source skipped when loaded
        self.used = 0

    def resume(self, iterations: int) -> None:
        """Continue the stream after ``iterations`` steps (before the first batch is drawn)."""
        if iterations > 0 and self.dataset is not None:
            self.dataset.resume(iterations, self.batch_size)
            logger.info("resuming the training stream after %d iterations of %d samples per rank",
                        iterations, self.batch_size)

    def __iter__(self) -> Iterator[List[Dict]]:
        for batch in self.loader:
            for sample in batch:
                self.skipped.update(sample.pop("skipped", {}))
            self.used += len(batch)
            yield batch


def _totals(loader: SkipCountingLoader) -> Counter:
    """This loader's counts summed over all ranks (a collective: every rank calls it)."""
    total = Counter()
    for used, skipped in comm.all_gather((loader.used, dict(loader.skipped))):
        total["used"] += used
        total.update(skipped)
    return total


class SkipCountsHook(HookBase):
    """Every ``period`` steps and at the end: the totals over all ranks into the EventStorage
    (``data/skipped_<kind>``, ``data/bad_fraction``), and a stop (:class:`TooManyBadSamples`, on
    every rank at the same step) once at least ``min_samples`` were read and the bad fraction
    exceeds ``max_bad_fraction``."""

    def __init__(self, loader: SkipCountingLoader, max_bad_fraction: float, period: int = 20, min_samples: int = 1000):
        self.loader, self.max_bad_fraction = loader, max_bad_fraction
        self.period, self.min_samples = period, min_samples

    def _check(self) -> Counter:
        total = _totals(self.loader)
        bad = sum(total[k] for k in BAD_KINDS)
        read = total["used"] + bad
        fraction = bad / read if read else 0.0
        storage = self.trainer.storage
        for kind in (*BAD_KINDS, "not_kept"):
            storage.put_scalar(f"data/skipped_{kind}", total[kind], smoothing_hint=False)
        storage.put_scalar("data/bad_fraction", fraction, smoothing_hint=False)
        if read >= self.min_samples and fraction > self.max_bad_fraction:
            raise TooManyBadSamples(
                f"{bad} of {read} samples read were bad ({fraction:.1%} > DATASETS.IMAGE_TEXT.MAX_BAD_FRACTION "
                f"{self.max_bad_fraction:.1%}): {self._by_kind(total)}. Check the data (the log names every bad "
                "file and shard error), or raise the key")
        return total

    @staticmethod
    def _by_kind(total: Counter) -> str:
        return ", ".join(f"{k} {total[k]}" for k in (*BAD_KINDS, "not_kept") if total[k]) or "none"

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 or next_iter == self.trainer.max_iter:  # as detectron2's writers
            self._check()

    def after_train(self):  # a summary, never a stop: the run is over either way
        total = _totals(self.loader)
        if comm.is_main_process():
            logger.info("training data: %d samples used; skipped: %s", total["used"], self._by_kind(total))
