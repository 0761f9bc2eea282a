"""Per-step scalars kept on the device and read on the host once per writer period.

Reading a GPU scalar (``.item()``, ``float(t)``) blocks the host until the device has caught up,
so a trainer that reads its losses every step can never queue the next step ahead of the GPU.
detectron2's ``SimpleTrainer`` does (``write_metrics``: ``.item()`` of every loss, every step),
and so did the TTD hook's statistics. Here each step's 0-d tensors are only stacked (a device
op); the writer period's steps are read in one copy, then written to the ``EventStorage`` at
their own iterations, so the storage holds exactly what per-step reads would have put there by
the time detectron2's ``PeriodicWriter`` writes it (hooks that flush run before the writer).

:func:`defer_loss_metrics` swaps this in for ``SimpleTrainer``'s per-step read
(``SOLVER.DEFER_METRICS``); a non-finite loss then stops training at the flush, up to a period
late, with the iteration it happened at (detectron2's own error, raised by its own code).
"""
from typing import Callable, Dict, List, Mapping, Tuple

import torch
from detectron2.engine import HookBase, SimpleTrainer, hooks
from detectron2.utils.events import get_event_storage

__all__ = ["DEFAULT_WRITER_PERIOD", "DeferredScalars", "DeferredMetricsHook", "defer_loss_metrics", "writer_period"]

WriteFn = Callable[[Dict[str, float], Dict], None]


class DeferredScalars:
    """Buffer of ``(iteration, {name: 0-d tensor}, host extras)`` flushed with one host read."""

    def __init__(self):
        self._pending: List[Tuple[int, List[str], torch.Tensor, Dict]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, iteration: int, scalars: Mapping[str, torch.Tensor], **extras) -> None:
        """Keep ``scalars`` (0-d tensors, detached here) of ``iteration``; ``extras`` are host values
        handed back to the writer as they are."""
        names = list(scalars)
        values = torch.stack([scalars[n].detach().float().reshape(()) for n in names]) if names else torch.zeros(0)
        self._pending.append((int(iteration), names, values, extras))

    def flush(self, write: WriteFn) -> None:
        """``write({name: float}, extras)`` for every pending step in order, the storage's ``iter``
        set to that step's iteration meanwhile; all values are read in one device-to-host copy."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flat = torch.cat([values.to(pending[0][2].device) for _, _, values, _ in pending]).tolist()
        storage = get_event_storage()
        current, offset = storage.iter, 0
        try:
            for iteration, names, _, extras in pending:
                storage.iter = iteration
                write(dict(zip(names, flat[offset:offset + len(names)])), extras)
                offset += len(names)
        finally:
            storage.iter = current


# The period of the PeriodicWriter that detectron2's DefaultTrainer.build_hooks adds.
DEFAULT_WRITER_PERIOD = 20


def writer_period(hook_list) -> int:
    """The period of detectron2's ``PeriodicWriter`` in ``hook_list``; ``DEFAULT_WRITER_PERIOD``
    where there is none: only the main process has a writer, and every process must flush at the
    same steps (the losses' flush gathers across processes)."""
    writer = next((h for h in hook_list if isinstance(h, hooks.PeriodicWriter)), None)
    return int(getattr(writer, "_period", DEFAULT_WRITER_PERIOD)) if writer is not None else DEFAULT_WRITER_PERIOD


def writes_now(iteration: int, max_iter: int, period: int) -> bool:
    """Whether ``PeriodicWriter`` writes after ``iteration`` (its own condition)."""
    return (iteration + 1) % period == 0 or iteration == max_iter - 1


def _write_losses(values: Dict[str, float], extras: Dict) -> None:
    """detectron2's own ``SimpleTrainer.write_metrics`` on the values read (gather across
    processes, mean losses, max data time, its non-finite check and error)."""
    SimpleTrainer.write_metrics({k: torch.tensor(v) for k, v in values.items()}, extras["data_time"], extras["prefix"])


class DeferredMetricsHook(HookBase):
    """Flushes ``scalars`` through ``write`` when the writer is about to write, and at the end.
    Placed before detectron2's ``PeriodicWriter``."""

    def __init__(self, scalars: DeferredScalars, write: WriteFn, period: int):
        self.scalars, self.write, self.period = scalars, write, period

    def after_step(self):
        if writes_now(self.trainer.iter, self.trainer.max_iter, self.period):
            self.scalars.flush(self.write)

    def after_train(self):
        self.scalars.flush(self.write)


def defer_loss_metrics(simple_trainer: SimpleTrainer, period: int) -> DeferredMetricsHook:
    """Make ``simple_trainer`` (detectron2's ``SimpleTrainer`` / ``AMPTrainer``) keep each step's
    losses on the device instead of reading them; the returned hook writes them every ``period``."""
    scalars = DeferredScalars()

    def keep(loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = "") -> None:
        scalars.add(get_event_storage().iter, loss_dict, data_time=data_time, prefix=prefix)

    simple_trainer._write_metrics = keep  # the instance's, in place of SimpleTrainer._write_metrics
    return DeferredMetricsHook(scalars, _write_losses, period)
