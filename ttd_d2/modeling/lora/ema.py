"""Exponential moving average of the adapters (the ``ema`` teacher of TTD)."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .state import lora_state_dict


@torch.no_grad()
def lora_ema_update(ema_state: Dict[str, torch.Tensor], model: nn.Module,
                    decay: float) -> Dict[str, torch.Tensor]:
    """In place ``ema = decay * ema + (1 - decay) * live`` for every LoRA tensor.

    An empty ``ema_state`` is initialized with a copy of the live LoRA state. Keys must
    otherwise match :func:`lora_state_dict` exactly (``KeyError``). Returns ``ema_state``.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    live = lora_state_dict(model)
    if not ema_state:
        ema_state.update(live)
        return ema_state
    if set(ema_state) != set(live):
        missing = sorted(set(live) - set(ema_state))
        unexpected = sorted(set(ema_state) - set(live))
        raise KeyError(f"EMA state does not match the model's LoRA: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    for k, v in live.items():
        e = ema_state[k]
        e.mul_(decay).add_(v.to(device=e.device, dtype=e.dtype), alpha=1.0 - decay)
    return ema_state
