"""The two adapter kinds: a side branch for ``nn.Linear`` modules and a weight parametrization
for raw weight tensors.

Both hold ``lora_A`` ``[r, in]`` (Kaiming-uniform) and ``lora_B`` ``[out, r]`` (zeros, so a
fresh adapter is an exact no-op), ``scaling = alpha / rank``, an ``enabled`` flag and
``delta_override``: a tensor ``[out, in]`` used instead of ``scaling * B @ A`` when set (the
EMA teacher runs with ``W + EMA(delta)``, see :mod:`.ema`).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .low_rank import low_rank_linear

VALID_TARGETS: Tuple[str, ...] = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")
VALID_TOWERS: Tuple[str, ...] = ("image", "text")


class _LoRAMixin:
    """Shared pieces: ``lora_A`` [r, in], ``lora_B`` [out, r], ``scaling``, ``enabled``."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def _init_lora(self, in_features: int, out_features: int, rank: int, alpha: float,
                   device, dtype) -> None:
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        self.enabled = True
        self.delta_override: Optional[torch.Tensor] = None
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``, shape ``[out, in]`` (same as the adapted weight)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, enabled={self.enabled}"


class LoRALinear(_LoRAMixin, nn.Module):
    """Frozen ``nn.Linear`` plus a low-rank side branch.

    ``y = base(x) + (alpha / rank) * B(A(dropout(x)))``; with ``enabled=False`` ``y = base(x)``;
    with ``delta_override`` D ``y = base(x) + x D^T`` (no dropout). ``x`` ``[..., in]`` -> ``y`` ``[..., out]``. ``.weight`` / ``.bias`` (and ``in_features`` /
    ``out_features``) return the base's, unmerged.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        self.base = base
        self._init_lora(base.in_features, base.out_features, rank, alpha,
                        base.weight.device, base.weight.dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        x_low = x if self.delta_override is not None else self.dropout(x)
        return low_rank_linear(x, self.base.weight, self.base.bias, self, x_low)


class LoRAParametrization(_LoRAMixin, nn.Module):
    """Weight parametrization ``W -> W + (alpha / rank) * B @ A`` (``W`` when disabled,
    ``W + delta_override`` when that is set).

    ``W`` ``[out, in]``; ``A`` ``[r, in]``; ``B`` ``[out, r]``. Register with
    ``parametrize.register_parametrization(module, name, LoRAParametrization(...))``.
    """

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float,
                 device=None, dtype=None):
        super().__init__()
        self._init_lora(in_features, out_features, rank, alpha, device, dtype)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self.delta_override is not None:
            return weight + self.delta_override
        return weight + self.delta_weight()


LORA_MODULES = (LoRALinear, LoRAParametrization)
