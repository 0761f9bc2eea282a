"""Exponential moving average of the adapted weights (the ``ema`` teacher of TTD).

The EMA is kept of each adapter's delta ``s * B @ A`` ``[out, in]``, not of ``A`` and ``B``
separately: ``EMA(B) @ EMA(A)`` is not ``EMA(B @ A)``. Since the base weight ``W`` is frozen,
``W + EMA(s B A)`` is exactly the EMA of the adapted weight ``W + s B A``; the teacher runs
with it through :func:`lora_delta_override`.

Memory: one full-size tensor per adapted weight (as large as the adapted base weights
themselves, e.g. ~0.5 GB in fp32 for every projection of both ViT-B/16 towers) instead of the
few MB of the adapters.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Mapping

import torch
from torch import nn

from .state import iter_lora_modules


@torch.no_grad()
def lora_deltas(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{adapted weight name: scaling * B @ A}`` ``[out, in]`` of every adapter (new tensors,
    no graph); the names are those of :func:`~.state.iter_lora_modules`."""
    return {name: m.delta_weight() for name, m in iter_lora_modules(model)}


def check_lora_deltas(deltas: Mapping[str, torch.Tensor], model: nn.Module, what: str = "LoRA deltas") -> None:
    """``KeyError`` unless ``deltas`` has one entry per adapted weight of ``model``,
    ``RuntimeError`` unless each has that weight's shape ``[out, in]``."""
    adapters = dict(iter_lora_modules(model))
    if set(deltas) != set(adapters):
        missing = sorted(set(adapters) - set(deltas))
        unexpected = sorted(set(deltas) - set(adapters))
        raise KeyError(f"{what} does not match the model's adapters: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    bad = [f"{n}: {tuple(deltas[n].shape)} vs {(m.lora_B.shape[0], m.lora_A.shape[1])}"
           for n, m in adapters.items() if tuple(deltas[n].shape) != (m.lora_B.shape[0], m.lora_A.shape[1])]
    if bad:
        raise RuntimeError(f"{what} shape mismatch:\n  " + "\n  ".join(bad))


@torch.no_grad()
def lora_ema_update(ema_state: Dict[str, torch.Tensor], model: nn.Module,
                    decay: float) -> Dict[str, torch.Tensor]:
    """In place ``ema[n] = decay * ema[n] + (1 - decay) * scaling * B @ A`` for every adapted
    weight ``n`` of ``model``.

    An empty ``ema_state`` is initialized with :func:`lora_deltas`. Otherwise its keys must be
    the adapted weight names (``KeyError``) with the weights' shapes (``RuntimeError``).
    Returns ``ema_state``.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    adapters = dict(iter_lora_modules(model))
    if not ema_state:
        ema_state.update(lora_deltas(model))
        return ema_state
    check_lora_deltas(ema_state, model, "EMA state")
    for name, m in adapters.items():
        e = ema_state[name]  # one fused step, no full-size temporary
        e.addmm_(m.lora_B.to(e), m.lora_A.to(e), beta=decay, alpha=(1.0 - decay) * m.scaling)
    return ema_state


@contextlib.contextmanager
def lora_delta_override(model: nn.Module, deltas: Mapping[str, torch.Tensor]):
    """Context manager: every adapted weight ``n`` reads ``W + deltas[n]`` instead of
    ``W + scaling * B @ A`` (the EMA teacher: ``deltas`` = the EMA state); restored on exit,
    also on exceptions. Adapters switched off (:func:`~.state.lora_disabled`) still give ``W``.
    Nothing computed inside depends on ``A`` or ``B``. Keys and shapes as in
    :func:`lora_ema_update`."""
    check_lora_deltas(deltas, model, "LoRA delta override")
    adapters = dict(iter_lora_modules(model))
    previous = {name: m.delta_override for name, m in adapters.items()}
    try:
        for name, m in adapters.items():
            m.delta_override = deltas[name]
        yield model
    finally:
        for name, m in adapters.items():
            m.delta_override = previous[name]
