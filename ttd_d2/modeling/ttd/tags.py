"""Caption -> candidate tags (TTD Step 1), the NLTK noun/adjective baseline, and batching.

Tokenisation is NLTK's Treebank word tokenizer (``nltk.word_tokenize(..., preserve_line=True)``,
which needs no ``punkt`` data). Its contraction clitics are mapped back to words so that they
meet the NLTK stopword list: ``n't`` -> ``not`` (and ``ca``/``wo``/``sha`` before it -> ``can``/
``will``/``shall``), ``'re`` -> ``are``, ``'m`` -> ``am``, ``'ve`` -> ``have``, ``'ll`` -> ``will``;
the ambiguous ``'s`` (possessive / is / has) and ``'d`` (would / had) carry no object and are
dropped. A token is then lower-cased, leading/trailing punctuation is stripped (inner hyphens,
dots and apostrophes stay: ``well-known``, ``u.s``), and it is kept only if it has a letter.

The text tower encodes a caption at its context length (SOT + tokens + EOT, truncated), so the
caption embedding never sees words past that window: ``candidate_tags`` keeps only the tags
whose first occurrence lies inside it (``tags_in_token_window``), then at most ``max_tags`` of
them, in caption order.
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "candidate_tags",
    "caption_to_tags",
    "nltk_noun_adjective_mask",
    "pad_tag_batch",
    "tags_in_token_window",
    "token_window",
    "visible_prefix",
]

FitsWindow = Callable[[Sequence[str]], List[bool]]

_NLTK_DATA_HINT = (
    "NLTK data is missing: run `python -m nltk.downloader stopwords "
    "averaged_perceptron_tagger_eng` or set NLTK_DATA to a folder that holds them."
)
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")
_CLITIC_WORDS = {"n't": "not", "'re": "are", "'m": "am", "'ve": "have", "'ll": "will", "'s": "", "'d": ""}
_NEGATED_STEMS = {"ca": "can", "wo": "will", "sha": "shall"}
_NOUN_ADJECTIVE_PREFIXES = ("NN", "JJ")
_CHUNK = re.compile(r"\S+")
_TRAILING_PUNCTUATION = re.compile(r"[\W_]+$")


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
    limit is applied here (``candidate_tags`` applies the text tower's window).
    """
    stop = _english_stopwords() if remove_stopwords else frozenset()
    tags: List[str] = []
    seen = set()
    for word in _normalize_tokens(_tokenize(caption)):
        if word and word not in stop and word not in seen:
            seen.add(word)
            tags.append(word)
    return tags


class _TokenWindow:
    """``fits`` of :func:`token_window`: a class, not a closure, so that a training mapper that
    holds one can be sent to loader worker processes (pickled)."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts: Sequence[str]) -> List[bool]:
        if not texts:
            return []
        tokens = self.tokenizer(list(texts), context_length=self.context_length + 1)
        return (tokens[:, -1] == 0).tolist()


def token_window(tokenizer, context_length: int) -> FitsWindow:
    """``fits(texts) -> [bool]``: whether each text, as SOT + tokens + EOT, fits in
    ``context_length`` positions, i.e. the text tower sees all of it.

    ``tokenizer`` is an open_clip tokenizer (``tokenizer(texts, context_length=n)`` -> ids
    [N, n], 0 = padding). Texts are tokenized one position longer than the window, so a text
    fits iff that last position is padding (at ``context_length`` itself a text of exactly
    the window and a truncated one look the same).
    """
    return _TokenWindow(tokenizer, context_length)


def _cut_points(caption: str) -> List[int]:
    """Ascending character offsets where a prefix of ``caption`` ends a whole word: after each
    whitespace-separated chunk, and before the chunk's trailing punctuation ("grass|,|"). Each
    lies on a boundary of open_clip's pre-tokenizer (letter runs, digits, punctuation runs), so
    a prefix cut there tokenizes to a prefix of the caption's tokens."""
    cuts = []
    for chunk in _CHUNK.finditer(caption):
        trailing = _TRAILING_PUNCTUATION.search(chunk.group())
        word_end = chunk.end() - (len(trailing.group()) if trailing else 0)
        if chunk.start() < word_end < chunk.end():
            cuts.append(word_end)
        cuts.append(chunk.end())
    return cuts


def visible_prefix(caption: str, fits: FitsWindow) -> str:
    """The longest prefix of ``caption`` that ends a whole word (``_cut_points``) and that
    ``fits`` the window ("" when even the first word does not). Binary search over the cut
    points (a longer prefix never has fewer tokens): a few tokenizer calls, not one per word."""
    cuts = _cut_points(caption)
    low, high = 0, len(cuts)  # the prefix at cut ``low`` fits; any beyond cut ``high`` does not
    while low < high:
        middle = (low + high + 1) // 2
        if fits([caption[: cuts[middle - 1]]])[0]:
            low = middle
        else:
            high = middle - 1
    return caption[: cuts[low - 1]] if low else ""


def tags_in_token_window(
    caption: str, tags: Sequence[str], fits: FitsWindow, caption_fits: Optional[bool] = None
) -> List[str]:
    """The ``tags`` (from ``caption_to_tags(caption)``) whose first occurrence lies inside the
    text tower's window, in their order. A word counts as seen when all of its tokens are
    inside the window (a word cut by the truncation is dropped; so is one glued to a later
    word by punctuation without a space, "dog,cat", when the later word is cut).

    ``caption_fits``: ``fits([caption])[0]`` when the caller already has it (one batched call
    for a batch); when the caption fits, the tags are returned as they are.
    """
    if caption_fits is None:
        caption_fits = fits([caption])[0]
    if caption_fits:
        return list(tags)
    seen = set(caption_to_tags(visible_prefix(caption, fits), remove_stopwords=False))
    return [tag for tag in tags if tag in seen]


def candidate_tags(
    captions: Sequence[str], fits: FitsWindow, remove_stopwords: bool = True, max_tags: Optional[int] = None
) -> List[List[str]]:
    """Candidate tags of each caption: ``caption_to_tags``, limited to the text tower's window
    (``tags_in_token_window``), then the first ``max_tags`` in caption order (None = all).

    One tokenizer call for the whole batch; captions longer than the window cost a few more.
    """
    if max_tags is not None and max_tags < 1:
        raise ValueError(f"max_tags must be None or >= 1, got {max_tags}")
    whole = fits(captions)
    return [
        tags_in_token_window(caption, caption_to_tags(caption, remove_stopwords), fits, ok)[:max_tags]
        for caption, ok in zip(captions, whole)
    ]


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
    position_of: Dict[str, int] = {}
    max_tags = max((len(tags) for tags in tags_per_caption), default=0)
    # Python lists, then one tensor each: element-wise tensor writes cost microseconds apiece,
    # which adds up to milliseconds of host time per step at batch 1024.
    rows = [[position_of.setdefault(tag, len(position_of)) for tag in tags] for tags in tags_per_caption]
    index = torch.tensor([row + [0] * (max_tags - len(row)) for row in rows], dtype=torch.long).view(len(rows), max_tags)
    valid = torch.arange(max_tags) < torch.tensor([len(row) for row in rows], dtype=torch.long)[:, None]
    unique_tags = list(position_of)
    return unique_tags, index, valid
