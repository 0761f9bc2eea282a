"""ttd_d2.data.device_prefetch: the loader's batches, in its order, with their packed fields moved
by a background thread; loader errors surface in the consumer; the thread always stops."""
import itertools
import threading

import numpy as np
import pytest
import torch

from conftest import make_tiny_cfg
from ttd_d2.data.collate import PackedBatch, packed_batch_collator, stack_field
from ttd_d2.data.device_prefetch import DevicePrefetcher, move_packed_batch, prefetch_device


def _batch(i: int, n: int = 3):
    return packed_batch_collator([{"image": np.full((3, 4, 4), 10 * i + j, np.uint8),
                                   "caption_tokens": np.arange(5) + i, "caption": f"caption {i}.{j}"}
                                  for j in range(n)])


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "ttd-device-prefetch"]


class CountingLoader:
    """Yields ``batches`` and counts how many were taken; ``fail_at``: raises there."""

    def __init__(self, batches, fail_at=None):
        self.batches, self.fail_at, self.taken = batches, fail_at, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i == self.fail_at:
                raise RuntimeError(f"worker died at batch {i}")
            self.taken += 1
            yield batch


def test_batches_come_in_order_with_the_same_values():
    batches = [_batch(i) for i in range(5)]
    out = list(DevicePrefetcher(CountingLoader(batches), torch.device("cpu")))
    assert len(out) == 5
    for got, want in zip(out, batches):
        assert isinstance(got, PackedBatch) and [x["caption"] for x in got] == [x["caption"] for x in want]
        for key in ("image", "caption_tokens"):
            assert torch.equal(stack_field(got, key), stack_field(want, key))
            # every sample's field is a row of the moved stack: the step takes it without a copy
            assert stack_field(got, key).data_ptr() == got.stacks[key].data_ptr()
    assert not _prefetch_threads()


def test_move_packed_batch_leaves_other_batches_alone():
    plain = [{"image": np.zeros((3, 2, 2), np.uint8), "caption": "a"}]
    assert move_packed_batch(plain, torch.device("cpu")) is plain
    moved = move_packed_batch(_batch(0), torch.device("cpu"))
    assert set(moved.stacks) == {"image", "caption_tokens"} and moved[1]["caption"] == "caption 0.1"


def test_a_loader_error_is_raised_by_the_consumer_after_the_batches_before_it():
    prefetcher = DevicePrefetcher(CountingLoader([_batch(i) for i in range(4)], fail_at=2), "cpu")
    it = iter(prefetcher)
    assert [b[0]["caption"] for b in (next(it), next(it))] == ["caption 0.0", "caption 1.0"]
    with pytest.raises(RuntimeError, match="worker died at batch 2"):
        next(it)
    assert not _prefetch_threads()


def test_the_thread_reads_at_most_depth_plus_one_batches_ahead_and_stops_when_closed():
    loader = CountingLoader([_batch(i % 3) for i in range(50)])
    prefetcher = DevicePrefetcher(loader, "cpu", depth=2)
    it = iter(prefetcher)
    next(it)
    thread = prefetcher._running[1]
    thread.join(timeout=0.5)  # let it fill the queue
    assert 2 <= loader.taken <= 1 + 2 + 1  # the batch handed on, the queue, the one waiting to be put
    it.close()  # as when the consumer's generator is closed or collected
    assert not thread.is_alive() and not _prefetch_threads()


def test_close_stops_an_endless_loader_and_a_new_iterator_starts_over():
    prefetcher = DevicePrefetcher(itertools.cycle([_batch(0), _batch(1)]), "cpu")
    it = iter(prefetcher)
    assert next(it)[0]["caption"] == "caption 0.0"
    prefetcher.close()
    assert not _prefetch_threads()
    batches = [_batch(i) for i in range(3)]
    prefetcher.loader = batches
    assert [b[0]["caption"] for b in prefetcher] == ["caption 0.0", "caption 1.0", "caption 2.0"]
    iter(prefetcher)  # a second iterator stops the first's thread before starting its own
    prefetcher.close()
    assert not _prefetch_threads()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        DevicePrefetcher([], "cpu", depth=0)


def test_prefetch_device_only_for_cuda_with_the_key_on(monkeypatch):
    cfg = make_tiny_cfg()
    cfg.MODEL.DEVICE = "cpu"
    assert prefetch_device(cfg) is None
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    cfg.MODEL.DEVICE = "cuda"
    assert prefetch_device(cfg) == torch.device("cuda", 3)  # the rank's device under detectron2's launch
    cfg.MODEL.DEVICE = "cuda:1"
    assert prefetch_device(cfg) == torch.device("cuda", 1)
    cfg.DATALOADER.DEVICE_PREFETCH = False
    assert prefetch_device(cfg) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_are_on_the_device_and_equal_the_loader_ones():
    device = torch.device("cuda", torch.cuda.current_device())
    batches = [_batch(i, n=64) for i in range(6)]
    for got, want in zip(DevicePrefetcher(batches, device), batches):
        images = stack_field(got, "image")
        assert images.device == device and torch.equal(images.cpu(), stack_field(want, "image"))
        assert got[5]["caption_tokens"].device == device
