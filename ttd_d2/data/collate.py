"""Batches that cross from the loader workers to the main process in one piece.

detectron2's ``trivial_batch_collator`` hands the main process a list of per-sample dicts, so
every sample's image travels on its own (numpy arrays are pickled by value, tensors get one
shared-memory segment each), and the step then copies the images once more to stack them. With
16 workers feeding a ViT-B/16 at 448 px the main process's share of that capped the streamed
loader at ~880 samples/s on the GPU host (benchmarks/README.md, ``bench_stream_loader.py
--collate``). :func:`packed_batch_collator` stacks each same-shape array field once, in the
worker, and gives every sample a view of the stack; :func:`stack_field` hands the step that
stack back without a copy. The samples stay detectron2's list of dicts: any model that reads
``x["image"]`` as an array or tensor works unchanged. In a loader worker the stacks are made in
shared memory, as torch's ``default_collate`` makes its batches: sending a tensor to the main
process otherwise first copies it there (about 10 ms per 50 MB batch of 128 px images, a fifth
of what the batch's 1,024 samples cost a worker to map, on a 2-core EPYC).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

__all__ = ["PACKED_FIELDS", "PackedBatch", "packed_batch_collator", "stack_field"]

# The per-sample arrays a training mapper emits (CaptionTrainMapper: "image" uint8 [3, H, W],
# "caption_tokens" int [L]).
PACKED_FIELDS = ("image", "caption_tokens")


def _as_tensor(value) -> torch.Tensor:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


class PackedBatch(list):
    """A list of sample dicts whose packed fields are rows of one tensor per field; pickled (to
    cross from a loader worker to the main process) as those tensors plus the other fields, so
    a batch costs one shared-memory segment per field, not one per sample and field."""

    def __init__(self, samples: Sequence[Dict] = (), stacks: Optional[Dict[str, torch.Tensor]] = None):
        super().__init__(samples)
        self.stacks = dict(stacks or {})

    def __reduce__(self):
        rest = [{k: v for k, v in sample.items() if k not in self.stacks} for sample in self]
        return _unpack, (self.stacks, rest)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)`` [B, ...]; inside a loader worker, into shared memory (the storage
    call is ``default_collate``'s own)."""
    if get_worker_info() is None:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
    return torch.stack(tensors, out=first.new(storage).resize_(len(tensors), *first.shape))


def _unpack(stacks: Dict[str, torch.Tensor], rest: List[Dict]) -> PackedBatch:
    samples = [dict(sample) for sample in rest]
    for key, stack in stacks.items():
        for sample, row in zip(samples, stack.unbind(0)):
            sample[key] = row
    return PackedBatch(samples, stacks)


def packed_batch_collator(batch: List[Dict], fields: Sequence[str] = PACKED_FIELDS) -> PackedBatch:
    """The list of samples (like ``trivial_batch_collator``), each of ``fields`` that every
    sample has with one shape and dtype stacked into one tensor [B, ...] whose rows are the
    samples' values (views); other fields, and fields whose shapes differ, are left as they are."""
    stacks = {}
    for key in fields:
        values = [sample.get(key) for sample in batch]
        if not values or not all(isinstance(v, (np.ndarray, torch.Tensor)) for v in values):
            continue
        tensors = [_as_tensor(v) for v in values]
        if len({(tuple(t.shape), t.dtype) for t in tensors}) == 1:
            stacks[key] = _stack(tensors)
    return _unpack(stacks, [{k: v for k, v in sample.items() if k not in stacks} for sample in batch])


def _rows_of_one_tensor(values: Sequence) -> "torch.Tensor | None":
    """The [B, ...] tensor whose rows ``values`` are, in order, if they are consecutive
    same-shape rows of one storage (as packed, also after the trip through the loader's shared
    memory, which keeps the storage but not the view's ``_base``); else None."""
    first = values[0]
    if not isinstance(first, torch.Tensor):
        return None
    storage, size = first.untyped_storage(), first.numel()
    for i, v in enumerate(values):
        if not (isinstance(v, torch.Tensor) and v.is_contiguous() and v.shape == first.shape and v.dtype == first.dtype
                and v.device == first.device and v.untyped_storage().data_ptr() == storage.data_ptr()
                and v.storage_offset() == first.storage_offset() + i * size):
            return None
    return first.new_empty(0).set_(storage, first.storage_offset(), (len(values), *first.shape))


def stack_field(batched_inputs: Sequence[Dict], key: str) -> torch.Tensor:
    """``torch.stack`` of ``x[key]`` (arrays or tensors) over the batch [B, ...]; when the
    values are the rows of one packed tensor, in order (:func:`packed_batch_collator`), that
    tensor itself, without a copy."""
    values = [x[key] for x in batched_inputs]
    packed = _rows_of_one_tensor(values)
    if packed is not None:
        return packed
    return torch.stack([_as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for v in values])
