"""Training batches moved to the GPU one step ahead, by a thread of their own.

The step copies each batch's images to the device itself (``TTDMetaArch.normalize``). From a
loader worker's shared memory that is a pageable copy, and a pageable host-to-device copy waits
for the stream to reach it: the host stalls until the GPU has finished the previous step, then
the GPU idles through the copy and until the host has queued the next kernels. On the GPU host
that was 8.5 ms of pageable copies per iteration of the tiny CLIP's pretraining, the trainer at
1.19-1.29x its GPU-bound rate (benchmarks/README.md). :class:`DevicePrefetcher` takes batches off
the loader in a background thread and copies their packed fields (``collate.PackedBatch``
stacks) on a CUDA stream of its own, which waits for nothing the step queued; the step's stream
waits only for that copy's event. torch's ``pin_memory`` thread is the model (it pins, we copy):
it exists only inside ``DataLoader`` and detectron2's loaders do not expose it.
"""
import queue
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from .collate import PackedBatch, _unpack

__all__ = ["DevicePrefetcher", "move_packed_batch", "prefetch_device"]

# How long the producer waits on a full queue before it checks whether it was told to stop.
_POLL_S = 0.1


class _End:
    """The loader is exhausted."""


class _Failure:
    """The loader raised ``error`` in the producer thread; it is raised again in the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def move_packed_batch(batch: List[Dict], device: torch.device) -> List[Dict]:
    """``batch`` with its packed stacks on ``device`` (non-blocking copies on the current
    stream) and every sample's packed fields rows of them; batches that are not
    :class:`PackedBatch` are returned as they are (the step copies their fields itself)."""
    if not isinstance(batch, PackedBatch) or not batch.stacks:
        return batch
    stacks = {k: v.to(device, non_blocking=True) for k, v in batch.stacks.items()}
    rest = [{k: v for k, v in sample.items() if k not in stacks} for sample in batch]
    return _unpack(stacks, rest)


def prefetch_device(cfg) -> Optional[torch.device]:
    """The CUDA device a training loader's batches are prefetched to (``DATALOADER.DEVICE_PREFETCH``
    on and ``MODEL.DEVICE`` a CUDA device; a bare "cuda" is the current one, the rank's device
    under detectron2's launch), else None."""
    device = torch.device(cfg.MODEL.DEVICE)
    if not cfg.DATALOADER.DEVICE_PREFETCH or device.type != "cuda":
        return None
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


class DevicePrefetcher:
    """Iterates ``loader`` with each batch's packed fields already on ``device``, ``depth``
    batches ahead, moved by a daemon thread; the batches and their order are the loader's.

    On CUDA the copies run on a stream of the thread's own and the consumer's current stream
    waits for each batch's copy (an event) before the batch is handed on; on other devices the
    thread only moves the stacks (``Tensor.to``) ahead of the step. An exception the loader
    raises comes out of the consumer's ``next`` at the batch where it happened. :meth:`close`
    (also called when the iterator is closed or a new one is made) stops the thread.
    """

    def __init__(self, loader: Iterable[List[Dict]], device: torch.device, depth: int = 1):
        if depth < 1:
            raise ValueError(f"DevicePrefetcher depth must be at least 1, got {depth}")
        self.loader, self.device, self.depth = loader, torch.device(device), depth
        self._running: Optional[Tuple[threading.Event, threading.Thread, "queue.Queue"]] = None

    def __len__(self):
        return len(self.loader)

    def _produce(self, source: Iterator, out: "queue.Queue", stop: threading.Event) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.set_device(self.device)  # the current device is per thread
            stream = torch.cuda.Stream(self.device)
        try:
            for batch in source:
                if cuda:
                    with torch.cuda.stream(stream):
                        item = (move_packed_batch(batch, self.device), stream.record_event())
                else:
                    item = (move_packed_batch(batch, self.device), None)
                if not self._put(out, item, stop):
                    return
            self._put(out, _End(), stop)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(out, _Failure(error), stop)

    @staticmethod
    def _put(out: "queue.Queue", item, stop: threading.Event) -> bool:
        """Put ``item`` unless told to stop first; True when it was put."""
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[List[Dict]]:
        self.close()
        out: "queue.Queue" = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(iter(self.loader), out, stop),
                                  name="ttd-device-prefetch", daemon=True)
        self._running = (stop, thread, out)
        thread.start()
        return self._consume(out, stop, thread)

    def _consume(self, out: "queue.Queue", stop: threading.Event, thread: threading.Thread):
        try:
            while True:
                item = out.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failure):
                    raise item.error
                batch, event = item
                if event is not None:
                    consumer = torch.cuda.current_stream(self.device)
                    consumer.wait_event(event)
                    for stack in getattr(batch, "stacks", {}).values():
                        # allocated on the copy stream, read by the step: not reused before that
                        stack.record_stream(consumer)
                yield batch
        finally:
            _shutdown(stop, thread, out)

    def close(self) -> None:
        """Stop the producer thread of the latest iterator, if it runs. It first finishes the
        batch it is reading from the loader (a loader that never yields again blocks this)."""
        if self._running is not None:
            _shutdown(*self._running)
            self._running = None


def _shutdown(stop: threading.Event, thread: threading.Thread, out: "queue.Queue") -> None:
    """Tell the producer to stop and wait for it, emptying the queue it may be blocked on."""
    stop.set()
    while thread.is_alive():
        try:
            out.get(timeout=_POLL_S)
        except queue.Empty:
            pass
        thread.join(timeout=_POLL_S)
