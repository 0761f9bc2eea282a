"""Tests for ttd_d2.modeling.ttd.text_cache."""
import torch

from ttd_d2.modeling.ttd.text_cache import TextEmbeddingCache


def _encode(texts):
    return torch.stack([torch.full((4,), float(len(t))) for t in texts]) * torch.arange(1.0, 5.0)


def test_entries_are_copies_of_one_row_not_views_of_the_batch():
    outputs = []

    def encode(texts):
        outputs.append(_encode(texts))
        return outputs[-1]

    cache = TextEmbeddingCache(encode)
    cache(["dog", "horse", "cat"])
    batch = outputs[0]
    for text in ("dog", "horse", "cat"):
        entry = cache._store[text]
        assert entry.untyped_storage().data_ptr() != batch.untyped_storage().data_ptr()
        assert entry.untyped_storage().nbytes() == entry.numel() * entry.element_size()  # one row
    batch.zero_()  # the cached values do not depend on the batch tensor living on
    assert torch.equal(cache(["horse"])[0], _encode(["horse"])[0])


def test_eviction_drops_least_recently_used_and_counts_encodes():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return _encode(texts)

    cache = TextEmbeddingCache(encode, max_entries=2)
    out = cache(["a", "bb", "a"])
    assert out.shape == (3, 4) and torch.equal(out[0], out[2])
    cache(["ccc"])  # evicts "bb": "a" was used after it
    assert list(cache._store) == ["a", "ccc"] and len(cache) == 2
    cache(["bb", "a"])
    assert calls == [["a", "bb"], ["ccc"], ["bb"]]
