"""Caption -> candidate tags (TTD Step 1), the NLTK noun/adjective baseline, and batching.

Tokenisation is NLTK's Treebank word tokenizer (``nltk.word_tokenize(..., preserve_line=True)``,
which needs no ``punkt`` data). Its contraction clitics are mapped back to words so that they
meet the NLTK stopword list: ``n't`` -> ``not`` (and ``ca``/``wo``/``sha`` before it -> ``can``/
``will``/``shall``), ``'re`` -> ``are``, ``'m`` -> ``am``, ``'ve`` -> ``have``, ``'ll`` -> ``will``;
the ambiguous ``'s`` (possessive / is / has) and ``'d`` (would / had) carry no object and are
dropped. A token is then lower-cased, leading/trailing punctuation is stripped (inner hyphens,
dots and apostrophes stay: ``well-known``, ``u.s``), and it is kept only if it has a letter.
"""
from __future__ import annotations

import functools
import re
from typing import List, Sequence, Tuple

import torch

__all__ = ["caption_to_tags", "nltk_noun_adjective_mask", "pad_tag_batch"]

_NLTK_DATA_HINT = (
    "NLTK data is missing: run `python -m nltk.downloader stopwords "
    "averaged_perceptron_tagger_eng` or set NLTK_DATA to a folder that holds them."
)
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")
_CLITIC_WORDS = {"n't": "not", "'re": "are", "'m": "am", "'ve": "have", "'ll": "will", "'s": "", "'d": ""}
_NEGATED_STEMS = {"ca": "can", "wo": "will", "sha": "shall"}
_NOUN_ADJECTIVE_PREFIXES = ("NN", "JJ")


@functools.lru_cache(maxsize=1)
def _english_stopwords() -> frozenset:
    """The NLTK English stopword list (loaded once)."""
    from nltk.corpus import stopwords

    try:
        return frozenset(stopwords.words("english"))
    except LookupError as err:
        raise LookupError(f"{_NLTK_DATA_HINT}\n{err}") from None


def _tokenize(caption: str) -> List[str]:
    """Treebank word tokens of ``caption``, original case, curly apostrophes made straight."""
    import nltk

    text = caption.replace("\u2019", "'").replace("\u2018", "'")
    return nltk.word_tokenize(text, preserve_line=True)


def _normalize_tokens(tokens: Sequence[str]) -> List[str]:
    """Token-aligned normalised words; '' marks a token that is not a word."""
    words = []
    for position, token in enumerate(tokens):
        lowered = token.lower()
        next_token = tokens[position + 1].lower() if position + 1 < len(tokens) else ""
        if lowered in _CLITIC_WORDS:
            lowered = _CLITIC_WORDS[lowered]
        elif next_token == "n't" and lowered in _NEGATED_STEMS:
            lowered = _NEGATED_STEMS[lowered]
        word = _EDGE_PUNCTUATION.sub("", lowered)
        words.append(word if any(ch.isalpha() for ch in word) else "")
    return words


def caption_to_tags(caption: str, remove_stopwords: bool = True) -> List[str]:
    """The caption's words as candidate tags: lower-cased, punctuation stripped, no pure numbers,
    optionally without NLTK English stopwords, unique in first-occurrence order.

    An empty caption, or one with only stopwords/punctuation/numbers, gives ``[]``. No length
    limit is applied (the text encoder truncates each tag prompt on its own).
    """
    stop = _english_stopwords() if remove_stopwords else frozenset()
    tags: List[str] = []
    seen = set()
    for word in _normalize_tokens(_tokenize(caption)):
        if word and word not in stop and word not in seen:
            seen.add(word)
            tags.append(word)
    return tags


@functools.lru_cache(maxsize=1)
def _pos_tagger():
    """NLTK's English perceptron tagger, loaded once (``nltk.pos_tag`` reloads it per call)."""
    from nltk.tag import PerceptronTagger

    return PerceptronTagger()


def nltk_noun_adjective_mask(caption: str, tags: Sequence[str]) -> List[bool]:
    """NLTK baseline (Table 2a): ``tags[k]`` is selected if any of its occurrences in the caption
    is POS-tagged as a noun (NN*) or an adjective (JJ*). Tags absent from the caption -> False.
    """
    tokens = _tokenize(caption)
    if not tokens:
        return [False] * len(tags)
    try:
        tagged = _pos_tagger().tag(tokens)
    except LookupError as err:
        raise LookupError(f"{_NLTK_DATA_HINT}\n{err}") from None
    selected = {
        word
        for word, (_, pos) in zip(_normalize_tokens(tokens), tagged)
        if word and pos.startswith(_NOUN_ADJECTIVE_PREFIXES)
    }
    return [tag in selected for tag in tags]


def pad_tag_batch(
    tags_per_caption: Sequence[Sequence[str]],
) -> Tuple[List[str], torch.Tensor, torch.Tensor]:
    """Deduplicate the tags of a batch so that each distinct tag is encoded once.

    Returns:
        unique_tags: list[str], distinct tags in first-occurrence order over the batch.
        index: LongTensor[B, Kmax], ``unique_tags[index[b, k]]`` is the k-th tag of caption b;
            0 where invalid. Gather the embeddings with ``unique_emb[index]`` -> [B, Kmax, D]
            (only when ``unique_tags`` is non-empty).
        valid: BoolTensor[B, Kmax], True for real tags, False for padding.
    Kmax is the longest tag list (0 if every caption has no tags).
    """
    unique_tags: List[str] = []
    position_of = {}
    batch_size = len(tags_per_caption)
    max_tags = max((len(tags) for tags in tags_per_caption), default=0)
    index = torch.zeros(batch_size, max_tags, dtype=torch.long)
    valid = torch.zeros(batch_size, max_tags, dtype=torch.bool)
    for b, tags in enumerate(tags_per_caption):
        for k, tag in enumerate(tags):
            if tag not in position_of:
                position_of[tag] = len(unique_tags)
                unique_tags.append(tag)
            index[b, k] = position_of[tag]
            valid[b, k] = True
    return unique_tags, index, valid
