"""Text tower forward at the shortest context that fits the batch.

open_clip's ``CLIP.encode_text`` always adds all ``context_length`` positional embeddings, so
tags of 2-3 tokens would be padded to 77. With a causal mask, the tokens up to the EOT token
never see the padding, so slicing positional embeddings and mask to the longest sequence of
the batch gives the same embedding at a fraction of the cost.

``TextTowerMethods`` is ``CLIPDense``'s text side (tokenising, prompt templates, embedding)
on top of it.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool


def shortest_context(tokens: torch.Tensor) -> int:
    """Length [1..L] of the shortest prefix holding every non-padding token of ``tokens`` [N, L]."""
    nonzero = (tokens != 0).int()
    last = nonzero.shape[1] - 1 - nonzero.flip(1).argmax(dim=1)
    return int(last.max().item()) + 1 if tokens.numel() else 1


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def encode_tokens(model, tokens: torch.Tensor, n_ctx: int = 0) -> torch.Tensor:
    """Text embeddings [N, D] (not normalised) of ``tokens`` [N, L] from an open_clip ``CLIP``,
    run at context ``n_ctx`` (0 = the shortest that fits; pass it when ``tokens`` live on
    the GPU to avoid a device sync).

    Models without a causal mask or with a custom text tower use open_clip's own forward.
    """
    if not hasattr(model, "token_embedding") or getattr(model, "attn_mask", None) is None:
        return model.encode_text(tokens)
    n_ctx = n_ctx or shortest_context(tokens)
    tokens = tokens[:, :n_ctx]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n_ctx].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n_ctx, :n_ctx])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection if model.text_projection is not None else x


class TextTowerMethods:
    """The text tower of ``CLIPDense``: strings or token ids -> L2-normalised embeddings [N, D].

    Reads ``self.clip`` (open_clip ``CLIP``), ``self.tokenizer``, ``self.prompt_tokenizer`` (its
    cached twin for prompted words), ``self.prompt_templates``, ``self.embed_dim`` and
    ``self.autocast(device)``, which ``CLIPDense.__init__`` sets.
    """

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        """Token ids [N, L] on the model's device (captions longer than the context are truncated)."""
        return self.tokenizer(list(texts)).to(self.clip.logit_scale.device)

    def encode_text(self, texts: List[str], use_templates: bool = False, chunk_size: int = 4096) -> torch.Tensor:
        """L2-normalised text embeddings [N, D]; with ``use_templates`` each text is put through
        every prompt template and the normalised embeddings are averaged (then renormalised)."""
        if not texts:
            return torch.zeros(0, self.embed_dim, device=self.clip.logit_scale.device)
        emb = self.encode_token_ids(self._prompt_tokens(texts, use_templates), chunk_size)
        return self._average_templates(emb, len(texts))

    def _prompt_tokens(self, texts: List[str], use_templates: bool) -> torch.Tensor:
        """Token ids [len(texts) * T, L] on the CPU of every text in every prompt template (text-major;
        T = 1 without templates)."""
        templates = self.prompt_templates if use_templates else ["{}"]
        tokenizer = self.prompt_tokenizer if use_templates else self.tokenizer
        return tokenizer([t.format(text) for text in texts for t in templates])

    def _average_templates(self, emb: torch.Tensor, num_texts: int) -> torch.Tensor:
        """[num_texts * T, D] normalised prompt embeddings (text-major) -> [num_texts, D]."""
        return F.normalize(emb.view(num_texts, -1, emb.shape[-1]).mean(1), dim=-1)

    def encode_tokens_and_words(self, tokens: torch.Tensor, words: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(encode_token_ids(tokens), encode_text(words, use_templates=True))`` in one pass of
        the text tower: captions' token ids [B, L] and the prompted words' share one batch
        (run at the context of its longest row; with the causal mask a shorter row's embedding
        does not depend on the padding after it). One pass instead of two halves the text
        tower's kernel launches, forward and backward, in a host-bound TTD step; the words'
        rows cost more FLOPs at the longer context, a few ms per step for ViT-B/16.
        Returns [B, D] and [len(words), D]."""
        if not words:
            return self.encode_token_ids(tokens), torch.zeros(0, self.embed_dim, device=self.clip.logit_scale.device)
        prompt_tokens = self._prompt_tokens(words, use_templates=True)
        width = max(tokens.shape[1], prompt_tokens.shape[1])
        joint = torch.cat([F.pad(t, (0, width - t.shape[1])) for t in (tokens.to(prompt_tokens.device), prompt_tokens)])
        emb = self.encode_token_ids(joint)
        return emb[: tokens.shape[0]], self._average_templates(emb[tokens.shape[0]:], len(words))

    def encode_token_ids(self, tokens: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
        """L2-normalised embeddings [N, D] of token ids [N, L] from ``self.tokenizer`` (on CPU:
        the context length is read without a device sync; the training loader's workers
        tokenise captions this way, off the main process).

        Token batches are padded to a multiple of 32 rows and 8 positions, so that batches of
        varying tag counts reuse a few kernel shapes (attention backends plan per shape)."""
        num = tokens.shape[0]
        n_ctx = min(round_up(shortest_context(tokens), 8), tokens.shape[1])
        rows = min(round_up(num, 32), max(num, chunk_size))
        tokens = F.pad(tokens[:, :n_ctx], (0, 0, 0, rows - num))
        tokens = tokens.to(self.clip.logit_scale.device, non_blocking=True)
        with self.autocast(tokens.device):
            chunks = [encode_tokens(self.clip, tokens[i : i + chunk_size], n_ctx) for i in range(0, len(tokens), chunk_size)]
        return F.normalize(torch.cat(chunks)[:num].float(), dim=-1)
