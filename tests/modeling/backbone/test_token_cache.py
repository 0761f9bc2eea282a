"""CachedTokenizer: the same ids as the tokenizer it wraps, each text tokenised once."""
import torch

from conftest import TINY_ARCH
from ttd_d2.modeling.backbone.clip_loading import build_tokenizer
from ttd_d2.modeling.backbone.token_cache import CachedTokenizer


class _Spy:
    """The tokenizer, recording the texts of each call."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []
        self.context_length = tokenizer.context_length

    def __call__(self, texts, context_length=None):
        self.calls.append(list(texts))
        return self.tokenizer(texts, context_length=context_length)


def test_same_ids_and_each_text_tokenised_once():
    raw = build_tokenizer(TINY_ARCH)
    spy = _Spy(raw)
    cached = CachedTokenizer(spy)
    texts = ["a photo of a dog.", "a photo of a cat.", "a photo of a dog."]
    first = cached(texts)
    again = cached(["a photo of a cat.", "a photo of a bird.", "a photo of a dog."])
    assert spy.calls == [["a photo of a dog.", "a photo of a cat."], ["a photo of a bird."]]
    assert torch.equal(first, raw(texts))
    assert torch.equal(again, raw(["a photo of a cat.", "a photo of a bird.", "a photo of a dog."]))
    assert torch.equal(cached(texts, context_length=5), raw(texts, context_length=5))  # keyed by length too
    assert cached.context_length == raw.context_length and len(cached) == 5
    first.zero_()  # the caller's tensor is its own: the memo is unchanged
    assert torch.equal(cached(texts), raw(texts))
    assert cached([]).shape == raw([]).shape


def test_emptied_when_full():
    raw = build_tokenizer(TINY_ARCH)
    cached = CachedTokenizer(raw, max_entries=2)
    cached(["a", "b"])
    assert len(cached) == 2
    assert torch.equal(cached(["c"]), raw(["c"])) and len(cached) == 1


def test_backbone_prompts_go_through_the_memo(tiny_cfg):
    from conftest import build

    backbone = build(tiny_cfg).backbone
    words = ["circle", "square"]
    expected = backbone.encode_text(words, use_templates=True)
    assert len(backbone.prompt_tokenizer) == len(words) * len(backbone.prompt_templates)
    assert torch.allclose(backbone.encode_text(words, use_templates=True), expected)
    backbone.encode_text(["a caption that is not prompted"])
    assert len(backbone.prompt_tokenizer) == len(words) * len(backbone.prompt_templates)  # captions are not held
