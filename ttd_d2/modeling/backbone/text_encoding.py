"""Text tower forward at the shortest context that fits the batch.

open_clip's ``CLIP.encode_text`` always adds all ``context_length`` positional embeddings, so
tags of 2-3 tokens would be padded to 77. With a causal mask, the tokens up to the EOT token
never see the padding, so slicing positional embeddings and mask to the longest sequence of
the batch gives the same embedding at a fraction of the cost.
"""
import torch
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
