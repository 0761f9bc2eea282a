"""Least-recently-used cache of text embeddings for a text tower that does not change
(the frozen teacher): each distinct tag is encoded once per run instead of once per step."""
from collections import OrderedDict
from typing import Callable, List

import torch


class TextEmbeddingCache:
    """Maps strings to embeddings [D], computing misses in one batched call. Each entry is
    its own copy of one row (not a view of the batch output), so evicting it frees its memory.

    Args:
        encode: list[str] -> Tensor[N, D]; must be deterministic (e.g. a frozen tower).
        max_entries: entries kept (least recently used are dropped first).
    """

    def __init__(self, encode: Callable[[List[str]], torch.Tensor], max_entries: int = 200_000):
        self.encode = encode
        self.max_entries = max_entries
        self._store: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    @torch.no_grad()
    def __call__(self, texts: List[str]) -> torch.Tensor:
        """Embeddings [len(texts), D] of ``texts``, in order."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._store))
        if missing:
            # clone(): a row of the batch output is a view that keeps the whole batch alive,
            # so evicting it would free nothing.
            for text, emb in zip(missing, self.encode(missing)):
                self._store[text] = emb.clone()
        for text in texts:
            self._store.move_to_end(text)
        out = torch.stack([self._store[t] for t in texts]) if texts else None
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return out
