"""Finding the adapters of a model, switching them off, and their state dicts.

Naming: adapters are named after the weight they adapt, e.g.
``visual.transformer.resblocks.3.attn.in_proj_weight`` or ``transformer.resblocks.0.mlp.c_fc.weight``;
:func:`lora_state_dict` keys add ``.lora_A`` / ``.lora_B``. The names do not depend on how the
adapter is implemented (side branch or parametrization).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Mapping, NamedTuple, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import LoRALinear, LoRAParametrization


def iter_lora_modules(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Yield ``(adapted weight name, adapter)`` for every LoRALinear / LoRAParametrization,
    in module order. Names are those returned by :func:`~.inject.add_lora`."""
    for name, mod in model.named_modules():
        pre = name + "." if name else ""
        if isinstance(mod, LoRALinear):
            yield pre + "weight", mod
        elif parametrize.is_parametrized(mod):
            for tname, plist in mod.parametrizations.items():
                for p in plist:
                    if isinstance(p, LoRAParametrization):
                        yield pre + tname, p


def lora_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Yield every LoRA parameter (``lora_A`` then ``lora_B`` of each adapter)."""
    for _, m in iter_lora_modules(model):
        yield m.lora_A
        yield m.lora_B


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Context manager: every adapter off (outputs exactly equal the base model), previous
    on/off states restored on exit, also on exceptions. Nestable. Gives the frozen teacher
    without a second model copy. Not to be toggled inside ``parametrize.cached()``."""
    mods = [m for _, m in iter_lora_modules(model)]
    prev = [m.enabled for m in mods]
    try:
        for m in mods:
            m.enabled = False
        yield model
    finally:
        for m, e in zip(mods, prev):
            m.enabled = e


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """LoRA tensors only, as detached clones: ``{"<weight name>.lora_A": [r, in],
    "<weight name>.lora_B": [out, r]}``. Safe for ``torch.save`` / ``torch.load(weights_only=True)``."""
    out: Dict[str, torch.Tensor] = {}
    for name, m in iter_lora_modules(model):
        out[name + ".lora_A"] = m.lora_A.detach().clone()
        out[name + ".lora_B"] = m.lora_B.detach().clone()
    return out


class LoRALoadResult(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]


def _first(keys: List[str], n: int = 5) -> str:
    return f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor],
                         strict: bool = True) -> LoRALoadResult:
    """Copy LoRA tensors from ``state`` (as made by :func:`lora_state_dict`) into ``model``
    (cast to each parameter's device/dtype). Shape mismatches always raise ``RuntimeError``;
    missing/unexpected keys raise ``KeyError`` if ``strict`` else are returned."""
    params: Dict[str, nn.Parameter] = {}
    for name, m in iter_lora_modules(model):
        params[name + ".lora_A"] = m.lora_A
        params[name + ".lora_B"] = m.lora_B
    missing = [k for k in params if k not in state]
    unexpected = [k for k in state if k not in params]
    if strict and (missing or unexpected):
        raise KeyError(f"LoRA state dict mismatch: {len(missing)} missing keys {_first(missing)}, "
                       f"{len(unexpected)} unexpected keys {_first(unexpected)}")
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(p.shape)}"
           for k, p in params.items() if k in state and tuple(state[k].shape) != tuple(p.shape)]
    if bad:
        raise RuntimeError("LoRA state dict shape mismatch (different rank?):\n  "
                           + "\n  ".join(bad))
    with torch.no_grad():
        for k, p in params.items():
            if k in state:
                p.copy_(state[k])
    return LoRALoadResult(missing, unexpected)

