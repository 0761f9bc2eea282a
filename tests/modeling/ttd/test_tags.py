"""Tests for ttd_d2.modeling.ttd.tags (needs NLTK_DATA with stopwords + the eng POS tagger)."""
import string

import pytest
import torch

from ttd_d2.modeling.ttd import tags as tags_module
from ttd_d2.modeling.ttd.tags import caption_to_tags, nltk_noun_adjective_mask, pad_tag_batch


def _alphabetic_word(number: int) -> str:
    letters = ""
    while True:
        number, digit = divmod(number, 26)
        letters = string.ascii_lowercase[digit] + letters
        if number == 0:
            return "zq" + letters


def test_stopwords_removed_and_order_kept():
    assert caption_to_tags("A green chameleon on a branch.") == ["green", "chameleon", "branch"]


def test_keep_stopwords():
    assert caption_to_tags("A green chameleon on a branch.", remove_stopwords=False) == [
        "a", "green", "chameleon", "on", "branch"]


@pytest.mark.parametrize("caption", ["", "   ", "\n\t"])
def test_empty_caption(caption):
    assert caption_to_tags(caption) == []
    assert caption_to_tags(caption, remove_stopwords=False) == []


def test_only_stopwords():
    assert caption_to_tags("This is what it was, and they are there.") == []
    assert caption_to_tags("the of and", remove_stopwords=False) == ["the", "of", "and"]


def test_punctuation_and_numbers():
    assert caption_to_tags("Hello, world!!! (test) -- ... \"quoted\" 'single'") == [
        "hello", "world", "test", "quoted", "single"]
    assert caption_to_tags("3 cats & 2.5 dogs in the 1990s; 42 !!!") == ["cats", "dogs", "1990s"]
    assert caption_to_tags("42 3.14 -- ?!", remove_stopwords=False) == []


def test_inner_punctuation_kept():
    assert caption_to_tags("A well-known e-mail from the U.S.") == ["well-known", "e-mail", "u.s"]


def test_repeated_words_and_case():
    assert caption_to_tags("Dog dog DOG, dog! Cat dog cat") == ["dog", "cat"]


def test_contractions():
    assert caption_to_tags("The dog isn't sleeping; it can't.") == ["dog", "sleeping"]
    assert caption_to_tags("The dog isn't sleeping; it can't.", remove_stopwords=False) == [
        "the", "dog", "is", "not", "sleeping", "it", "can"]
    assert caption_to_tags("a dog\u2019s bone and a cat's toy") == ["dog", "bone", "cat", "toy"]


def test_contractions_become_the_documented_words():
    """With the stopwords kept, each clitic shows the word it maps to: 'll and wo(n't) -> will,
    're -> are, 'm -> am, 've -> have; 's and 'd are dropped."""
    caption = "We'll go, they won't stop; you're here, I'm home, we've won, she'd say it's fine"
    assert caption_to_tags(caption, remove_stopwords=False) == [
        "we", "will", "go", "they", "not", "stop", "you", "are", "here", "i", "am", "home", "have", "won", "she",
        "say", "it", "fine"]


def test_curly_apostrophes_are_apostrophes():
    """U+2019 (and U+2018) in "dog’s", "can’t" split as the straight apostrophe does: no tag "s" or "t"."""
    assert caption_to_tags("a dog\u2019s bone; it can\u2019t fly", remove_stopwords=False) == [
        "a", "dog", "bone", "it", "can", "not", "fly"]
    assert caption_to_tags("I\u2018m here", remove_stopwords=False) == ["i", "am", "here"]


def test_caption_longer_than_77_tokens_is_not_truncated():
    words = [_alphabetic_word(i) for i in range(100)]
    assert caption_to_tags(" ".join(words)) == words
    assert caption_to_tags(", ".join(words + words)) == words


def test_nltk_baseline_known_sentence():
    caption = "a green chameleon on a branch"
    tags = caption_to_tags(caption, remove_stopwords=False)
    assert tags == ["a", "green", "chameleon", "on", "branch"]
    assert nltk_noun_adjective_mask(caption, tags) == [False, True, True, False, True]


def test_nltk_baseline_any_occurrence_and_absent_tags():
    caption = "They watch a watch"  # watch/VBP, then watch/NN
    assert nltk_noun_adjective_mask(caption, ["watch", "they", "giraffe"]) == [True, False, False]
    assert nltk_noun_adjective_mask(caption, []) == []
    assert nltk_noun_adjective_mask("", ["dog"]) == [False]


def test_nltk_baseline_verbs_not_selected():
    caption = "People running on a beach at sunset"
    tags = caption_to_tags(caption)
    assert tags == ["people", "running", "beach", "sunset"]
    assert nltk_noun_adjective_mask(caption, tags) == [True, False, True, True]


def test_missing_stopwords_data_message(monkeypatch, tmp_path):
    import nltk
    from nltk.corpus.reader import WordListCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(nltk.corpus, "stopwords", LazyCorpusLoader(
        "stopwords", WordListCorpusReader, r"(?!README|\.).*", encoding="utf8"))
    tags_module._english_stopwords.cache_clear()
    try:
        with pytest.raises(LookupError, match="nltk.downloader stopwords averaged_perceptron_tagger_eng"):
            caption_to_tags("a dog")
        assert caption_to_tags("a dog", remove_stopwords=False) == ["a", "dog"]
    finally:
        tags_module._english_stopwords.cache_clear()


def test_missing_tagger_data_message(monkeypatch):
    from ttd_d2.modeling.ttd import tags

    def missing(*args, **kwargs):
        raise LookupError("Resource averaged_perceptron_tagger_eng not found.")

    monkeypatch.setattr(tags, "_pos_tagger", missing)
    with pytest.raises(LookupError, match="NLTK_DATA"):
        nltk_noun_adjective_mask("a dog", ["dog"])


def test_pad_tag_batch_deduplicates():
    unique, index, valid = pad_tag_batch([["dog", "cat"], [], ["cat", "tree", "dog"]])
    assert unique == ["dog", "cat", "tree"]
    assert index.dtype == torch.long and valid.dtype == torch.bool
    assert index.tolist() == [[0, 1, 0], [0, 0, 0], [1, 2, 0]]
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    gathered = [[unique[i] for i, keep in zip(row, mask) if keep]
                for row, mask in zip(index.tolist(), valid.tolist())]
    assert gathered == [["dog", "cat"], [], ["cat", "tree", "dog"]]


def test_pad_tag_batch_embedding_gather():
    unique, index, valid = pad_tag_batch([["b", "a"], ["a"]])
    unique_emb = torch.arange(len(unique), dtype=torch.float32)[:, None].repeat(1, 4)
    tag_emb = unique_emb[index]
    assert tag_emb.shape == (2, 2, 4)
    assert tag_emb[0, 0, 0] == unique.index("b") and tag_emb[1, 0, 0] == unique.index("a")


def test_pad_tag_batch_no_tags():
    unique, index, valid = pad_tag_batch([[], []])
    assert unique == [] and index.shape == (2, 0) and valid.shape == (2, 0)
    unique, index, valid = pad_tag_batch([])
    assert unique == [] and index.shape == (0, 0) and valid.shape == (0, 0)
