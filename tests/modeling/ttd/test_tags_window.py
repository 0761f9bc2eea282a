"""Candidate tags limited to the text tower's token window and to MODEL.TTD.MAX_TAGS
(ttd_d2.modeling.ttd.tags), on hand-made captions with open_clip's own tokenizer at the tiny
test model's context length (16 = SOT + 14 tokens + EOT). Token counts are written out."""
import pytest
from open_clip.tokenizer import SimpleTokenizer

from ttd_d2.modeling.ttd.tags import candidate_tags, caption_to_tags, tags_in_token_window, token_window, visible_prefix

CONTEXT = 16
# 14 one-token words: exactly the window
FULL = "a red circle near a blue square and a green triangle on the grass"
FULL_TAGS = ["red", "circle", "near", "blue", "square", "green", "triangle", "grass"]


@pytest.fixture(scope="module")
def counted():
    """(fits, calls): the window test of a 16-token tokenizer, and the texts of each call."""
    tokenizer = SimpleTokenizer(context_length=CONTEXT)
    assert len(tokenizer.encode(FULL)) == CONTEXT - 2
    calls = []

    def counting(texts, context_length=None):
        calls.append(list(texts))
        return tokenizer(texts, context_length=context_length)

    return token_window(counting, CONTEXT), calls


def test_caption_of_exactly_the_window_keeps_all_tags_with_one_call(counted):
    fits, calls = counted
    calls.clear()
    assert caption_to_tags(FULL) == FULL_TAGS
    assert candidate_tags([FULL, "a dog"], fits) == [FULL_TAGS, ["dog"]]
    assert calls == [[FULL, "a dog"]]  # one batched call, no per-prefix counting


def test_word_past_the_window_is_dropped(counted):
    fits, calls = counted
    caption = FULL + " today"  # 15 tokens: "today" is truncated away
    assert fits([caption]) == [False]
    assert visible_prefix(caption, fits) == FULL
    calls.clear()
    assert tags_in_token_window(caption, caption_to_tags(caption), fits) == FULL_TAGS
    # the whole caption once, then a binary search over its 15 cut points: 4 prefixes
    assert len(calls) == 1 + 4 and calls[0] == [caption]


def test_first_occurrence_decides_and_punctuation_after_a_word_does_not_hide_it(counted):
    fits, _ = counted
    # tokens: ... the(13) grass(14) ,(15) red(16) today(17): "grass" is seen, its comma is not;
    # "red" occurs again past the window but first inside it; "today" is dropped
    caption = FULL + ", red today"
    assert caption_to_tags(caption) == FULL_TAGS + ["today"]
    assert candidate_tags([caption], fits) == [FULL_TAGS]
    assert visible_prefix(caption, fits) == FULL


def test_word_cut_by_the_truncation_is_dropped(counted):
    fits, _ = counted
    # a red circle ,(4) a blue square and a green triangle on a(13) well(14) -(15) known(16) lawn(17)
    caption = "a red circle, a blue square and a green triangle on a well-known lawn"
    assert caption_to_tags(caption) == ["red", "circle", "blue", "square", "green", "triangle", "well-known", "lawn"]
    assert candidate_tags([caption], fits) == [["red", "circle", "blue", "square", "green", "triangle"]]


def test_long_caption_and_stopwords_kept(counted):
    fits, _ = counted
    caption = " ".join(["big dog"] * 7 + ["small cat"] * 20)  # 54 tokens, window = 7 x "big dog"
    assert candidate_tags([caption], fits) == [["big", "dog"]]
    assert candidate_tags(["the dog " * 10], fits, remove_stopwords=False) == [["the", "dog"]]


def test_nothing_fits_and_empty_inputs(counted):
    fits, _ = counted
    giant = "x" * 200 + " dog"  # one 200-letter word is many BPE tokens
    assert visible_prefix(giant, fits) == ""
    assert candidate_tags([giant, "", "the of"], fits) == [[], [], []]
    assert candidate_tags([], fits) == []


def test_max_tags_keeps_the_first_in_caption_order(counted):
    fits, _ = counted
    caption = FULL + " today"
    assert candidate_tags([caption, "a dog"], fits, max_tags=3) == [["red", "circle", "near"], ["dog"]]
    assert candidate_tags([caption], fits, max_tags=100) == [FULL_TAGS]
    with pytest.raises(ValueError, match="max_tags"):
        candidate_tags([caption], fits, max_tags=0)
