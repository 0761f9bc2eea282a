"""Tests for ttd_d2.modeling.ttd.text_cache."""
import torch

from ttd_d2.modeling.ttd.text_cache import TextEmbeddingCache


def _embedding(text):
    """A distinct embedding [4] per text, from its characters and their positions ("ab" != "ba")."""
    codes = [ord(c) for c in text]
    return torch.tensor([float(len(text))] + [float(sum((i + k) * c for i, c in enumerate(codes))) for k in (1, 2, 3)])


def _encode(texts):
    """The fake text tower: each text's ``_embedding``, whichever batch it comes in."""
    return torch.stack([_embedding(t) for t in texts])


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


def test_each_row_is_its_own_texts_embedding_in_any_order():
    """out[i] == encode([texts[i]]) for texts in any order, repeated, partly cached or not,
    with texts of the same length ("ab", "ba", "cd")."""
    cache = TextEmbeddingCache(_encode)
    assert len({tuple(_embedding(t).tolist()) for t in ("ab", "ba", "cd")}) == 3
    for texts in (["ab", "ba", "cd"], ["cd", "xyz", "ab", "cd"], ["ba"], ["q", "ba", "q", "ab", "xyz"]):
        out = cache(texts)
        assert out.shape == (len(texts), 4)
        for i, text in enumerate(texts):
            assert torch.equal(out[i], _embedding(text)), (texts, i)
    assert cache(["dog"])[0].tolist() != cache(["god"])[0].tolist()
