"""A memo of an open_clip tokenizer's output per text.

A TTD step encodes the same words over and over: every batch's candidate tags, each through
every prompt template, are tokenised again for the student (the frozen teacher caches their
embeddings, the student cannot: its text adapters change every step). open_clip's tokenizer
cleans each text with ftfy and runs BPE in Python, ~0.2 ms per text, so a batch of 64 captions
spends tens of milliseconds of the main process on it. Token ids of a text never change, so
they are memoised; the tensors returned are exactly the tokenizer's.
"""
from typing import Dict, List, Tuple

import torch

__all__ = ["CachedTokenizer"]


class CachedTokenizer:
    """``tokenizer(texts, context_length=None) -> [N, L]`` ids, each text tokenised once.

    Args:
        tokenizer: an open_clip tokenizer (``tokenizer(texts, context_length=n)``).
        max_entries: texts held; the memo is emptied when it is full (a long run's vocabulary
            of tags is bounded, and refilling is cheap).
    """

    def __init__(self, tokenizer, max_entries: int = 100_000):
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._rows: Dict[Tuple[str, int], torch.Tensor] = {}

    def __getattr__(self, name):  # context_length, vocab_size, ...: the wrapped tokenizer's
        if name == "tokenizer":
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __len__(self) -> int:
        return len(self._rows)

    def __call__(self, texts, context_length: int = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.tokenizer.context_length
        missing: List[str] = list(dict.fromkeys(t for t in texts if (t, length) not in self._rows))
        if missing:
            ids = self.tokenizer(missing, context_length=length)
            if len(self._rows) + len(missing) > self.max_entries:
                self._rows.clear()
            self._rows.update(((t, length), row) for t, row in zip(missing, ids.clone()))  # callers own `ids`
            if len(missing) == len(texts):
                return ids
            lookup = dict(zip(missing, ids))
            return torch.stack([lookup[t] if t in lookup else self._rows[(t, length)] for t in texts])
        if not texts:
            return self.tokenizer(texts, context_length=length)
        return torch.stack([self._rows[(t, length)] for t in texts])

    def clear(self) -> None:
        self._rows.clear()
