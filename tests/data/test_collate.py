"""ttd_d2.data.collate: packed batches keep every value and cross a worker boundary as one stack."""
import numpy as np
import torch

from ttd_d2.data.collate import PackedBatch, packed_batch_collator, stack_field


def _samples(n=3, size=4):
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 256, (3, size, size), dtype=np.uint8),
             "caption_tokens": rng.integers(0, 100, (7,)), "caption": f"caption {i}", "height": size}
            for i in range(n)]


def test_packed_values_equal_the_samples_and_share_one_stack():
    samples = _samples()
    batch = packed_batch_collator(samples)
    assert [b["caption"] for b in batch] == [s["caption"] for s in samples] and batch[0]["height"] == 4
    for b, s in zip(batch, samples):
        assert isinstance(b["image"], torch.Tensor) and np.array_equal(b["image"].numpy(), s["image"])
        assert np.array_equal(b["caption_tokens"].numpy(), s["caption_tokens"])
    images = stack_field(batch, "image")
    assert images.shape == (3, 3, 4, 4) and images.data_ptr() == batch[0]["image"].data_ptr()  # no copy
    assert torch.equal(images, torch.stack([torch.from_numpy(s["image"]) for s in samples]))
    assert "image" in samples[0] and isinstance(samples[0]["image"], np.ndarray)  # inputs untouched


def test_unpackable_fields_are_left_alone_and_stack_field_copies_them():
    samples = _samples()
    samples[1]["image"] = np.zeros((3, 5, 5), dtype=np.uint8)  # another shape: not packed
    del samples[2]["caption_tokens"]
    batch = packed_batch_collator(samples)
    assert all(isinstance(b["image"], np.ndarray) for b in batch)
    assert isinstance(batch[0]["caption_tokens"], np.ndarray) and "caption_tokens" not in batch[2]
    assert packed_batch_collator([]) == []
    same = _samples()
    stacked = stack_field(same, "image")  # arrays: an ordinary stack
    assert torch.equal(stacked, torch.stack([torch.from_numpy(s["image"]) for s in same]))
    reordered = packed_batch_collator(same)[::-1]  # rows out of order: a copy, in the batch's order
    assert torch.equal(stack_field(reordered, "image")[0], torch.from_numpy(same[-1]["image"]))


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from _samples(8)


def test_through_loader_workers_the_batch_arrives_as_one_stack():
    loader = torch.utils.data.DataLoader(_Stream(), batch_size=4, num_workers=1, collate_fn=packed_batch_collator)
    expected = _samples(8)
    for k, batch in enumerate(loader):
        images = stack_field(batch, "image")
        assert images.data_ptr() == batch[0]["image"].data_ptr()  # rows of one shared segment
        want = torch.stack([torch.from_numpy(s["image"]) for s in expected[4 * k:4 * k + 4]])
        assert torch.equal(images, want)
        assert torch.equal(stack_field(batch, "caption_tokens")[3], torch.from_numpy(expected[4 * k + 3]["caption_tokens"]))


def test_pickled_as_one_tensor_per_field():
    """Between processes a packed batch is its stacks plus the other fields: one storage per
    field (as many as the stacks), rebuilt as the same samples."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    samples = _samples(5)
    batch = packed_batch_collator(samples)
    assert isinstance(batch, PackedBatch) and set(batch.stacks) == {"image", "caption_tokens"}
    rebuilt = pickle.loads(ForkingPickler.dumps(batch))
    assert isinstance(rebuilt, PackedBatch) and len(rebuilt) == 5
    storages = {x[key].untyped_storage().data_ptr() for x in rebuilt for key in ("image", "caption_tokens")}
    assert len(storages) == 2
    for x, s in zip(rebuilt, samples):
        assert np.array_equal(x["image"].numpy(), s["image"]) and x["caption"] == s["caption"]
    assert stack_field(rebuilt, "image").data_ptr() == rebuilt[0]["image"].data_ptr()
    rebuilt[0].pop("caption")  # the samples are ordinary dicts (SkipCountingLoader pops fields)
    assert "caption" in rebuilt[1]


def _collate_and_report_sharing(samples):
    batch = packed_batch_collator(samples)
    return {key: (stack.is_shared(), stack.clone()) for key, stack in batch.stacks.items()}


def test_in_a_loader_worker_the_stacks_are_made_in_shared_memory():
    """No copy on the way to the main process: the worker stacks straight into shared memory
    (the main process, outside any worker, gets an ordinary stack)."""
    assert not any(shared for shared, _ in _collate_and_report_sharing(_samples(4)).values())
    loader = torch.utils.data.DataLoader(_Stream(), batch_size=4, num_workers=1, collate_fn=_collate_and_report_sharing)
    expected = _samples(8)
    for k, report in enumerate(loader):
        assert set(report) == {"image", "caption_tokens"} and all(shared for shared, _ in report.values())
        want = torch.stack([torch.from_numpy(s["image"]) for s in expected[4 * k:4 * k + 4]])
        assert torch.equal(report["image"][1], want)
