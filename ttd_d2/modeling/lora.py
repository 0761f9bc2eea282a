"""Hand-written LoRA for open_clip transformer towers (TTD step 2: only LoRA is trained).

TTD trains low-rank adapters on the attention and MLP projections of both CLIP towers while
every base weight stays frozen; the released checkpoint holds only the adapters. This module
adds such adapters to ``open_clip.transformer.ResidualAttentionBlock`` blocks:

* ``mlp.c_fc`` / ``mlp.c_proj`` (``nn.Linear`` called as modules) are wrapped by
  :class:`LoRALinear`, a side branch ``y = base(x) + s * B(A(dropout(x)))``; the backward never
  forms a full weight gradient.
* ``attn.in_proj_weight`` (q, k, v stacked, ``[3C, C]``) and ``attn.out_proj.weight`` are read
  as raw tensors by ``nn.MultiheadAttention.forward`` (it never calls ``out_proj``), and by our
  own custom last-block forwards. They get a :mod:`torch.nn.utils.parametrize`
  parametrization :class:`LoRAParametrization` returning ``W + s * B @ A``, so every attribute
  access (``block.attn.in_proj_weight``, ``block.attn.out_proj.weight``, ``block.attn.out_proj(x)``)
  sees the adapted weight.

with ``s = alpha / rank``, ``A`` ``[r, in]`` Kaiming-uniform, ``B`` ``[out, r]`` zeros (so a fresh
adapter is an exact no-op).

Why not ``peft``: it pulls in ``transformers`` and its ``nn.MultiheadAttention`` support is
experimental; the few lines here are easier to audit and have no extra dependency.

Naming: :func:`lora_state_dict` keys are ``<adapted weight name>.lora_A`` / ``.lora_B``, e.g.
``visual.transformer.resblocks.3.attn.in_proj_weight.lora_A`` or
``transformer.resblocks.0.mlp.c_fc.weight.lora_B``, independent of the implementation details.

Caveats:

* After :func:`add_lora` the model's own ``state_dict()`` names the adapted base weights
  ``...attn.parametrizations.in_proj_weight.original``, ``...out_proj.parametrizations.weight.original``
  and ``...mlp.c_fc.base.weight``. A load-state-dict pre-hook maps the plain open_clip names onto
  them, so plain (pre-LoRA) checkpoints still load; they then only miss the LoRA keys.
* Every access of a parametrized weight recomputes ``W + s B A`` (``nn.MultiheadAttention``
  reads ``in_proj_weight`` 3-4 times per forward for its fast-path checks): ~``6 C^2 r`` flops
  per read, small next to the attention itself. For repeated inference use ``parametrize.cached()`` (do not
  toggle :func:`lora_disabled` inside it) or :func:`merge_lora`.
* Pickling the whole model (``torch.save(model)``) is not supported by ``parametrize``; use
  state dicts. ``copy.deepcopy`` works.
* ``torch.compile`` works (checked on CPU, torch 2.14, eval and train); the ``enabled`` flags
  are Python attributes, so toggling :func:`lora_disabled` recompiles once per state.
* Exactness: ``add_lora`` freezes the base weights, and on CPU ``F.linear`` on a non-contiguous
  input (MHA transposes to sequence-first) picks a different kernel when the weight does not
  require grad (~1e-6 differences). "Exactly equal to the base model" therefore refers to the
  base model with frozen parameters (which is what the frozen teacher is).
* ``alpha`` is not stored in :func:`lora_state_dict`; the loader must use the same
  ``alpha``/``rank`` (the rank is checked through the shapes).
* ``dropout`` only applies to :class:`LoRALinear` targets (MLP); a weight parametrization has no
  input to drop.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "VALID_TARGETS",
    "VALID_TOWERS",
    "LoRALinear",
    "LoRAParametrization",
    "add_lora",
    "add_lora_to_blocks",
    "iter_lora_modules",
    "lora_parameters",
    "lora_disabled",
    "lora_state_dict",
    "load_lora_state_dict",
    "LoRALoadResult",
    "merge_lora",
    "lora_ema_update",
    "lora_swapped",
]

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
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``, shape ``[out, in]`` (same as the adapted weight)."""
        return self.scaling * (self.lora_B @ self.lora_A)


class LoRALinear(_LoRAMixin, nn.Module):
    """Frozen ``nn.Linear`` plus a low-rank side branch.

    ``y = base(x) + (alpha / rank) * B(A(dropout(x)))``; with ``enabled=False`` ``y = base(x)``.
    ``x`` ``[..., in]`` -> ``y`` ``[..., out]``. ``.weight`` / ``.bias`` (and ``in_features`` /
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
        y = self.base(x)
        if not self.enabled:
            return y
        return y + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, enabled={self.enabled}"


class LoRAParametrization(_LoRAMixin, nn.Module):
    """Weight parametrization ``W -> W + (alpha / rank) * B @ A`` (``W`` when disabled).

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
        return weight + self.delta_weight()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, enabled={self.enabled}"


_LoRAModule = (LoRALinear, LoRAParametrization)


# --------------------------------------------------------------------------------------------
# Adding adapters
# --------------------------------------------------------------------------------------------

def _rename_keys_hook(mapping: Mapping[str, str]):
    """Load-state-dict pre-hook: move plain keys (``prefix + old``) to ``prefix + new``."""

    def hook(module, state_dict, prefix, *args):
        for old, new in mapping.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)

    return hook


def _add_hook(module: nn.Module, mapping: Mapping[str, str]) -> None:
    handle = module.register_load_state_dict_pre_hook(_rename_keys_hook(mapping))
    module.__dict__.setdefault("_lora_hook_handles", []).append(handle)


def _remove_hooks(module: nn.Module) -> None:
    for handle in module.__dict__.pop("_lora_hook_handles", []):
        handle.remove()


def _lora_param_ids(model: nn.Module) -> set:
    return {id(p) for _, m in iter_lora_modules(model) for p in (m.lora_A, m.lora_B)}


def _parametrize_weight(module: nn.Module, tensor_name: str, rank: int, alpha: float) -> None:
    if parametrize.is_parametrized(module, tensor_name):
        raise ValueError(f"{type(module).__name__}.{tensor_name} is already parametrized")
    w = getattr(module, tensor_name)
    p = LoRAParametrization(w.shape[0], w.shape[1], rank, alpha, device=w.device, dtype=w.dtype)
    parametrize.register_parametrization(module, tensor_name, p)
    _add_hook(module, {tensor_name: f"parametrizations.{tensor_name}.original"})


def _check_args(rank: int, targets: Iterable[str], towers: Iterable[str], dropout: float
                ) -> Tuple[List[str], List[str]]:
    if isinstance(targets, str) or isinstance(towers, str):
        raise ValueError("targets and towers must be sequences of strings, not a string")
    targets, towers = list(targets), list(towers)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    bad = [t for t in targets if t not in VALID_TARGETS]
    if bad or not targets:
        raise ValueError(f"invalid LoRA targets {bad or targets}; valid: {list(VALID_TARGETS)}")
    bad = [t for t in towers if t not in VALID_TOWERS]
    if bad or not towers:
        raise ValueError(f"invalid LoRA towers {bad or towers}; valid: {list(VALID_TOWERS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    return targets, towers


def _tower_blocks(model: nn.Module, tower: str) -> Tuple[str, nn.ModuleList]:
    """``(prefix, resblocks)`` of an open_clip tower (CLIP or CustomTextCLIP layout)."""
    if tower == "image":
        candidates = [("visual.transformer", ("visual", "transformer"))]
    else:
        candidates = [("transformer", ("transformer",)),
                      ("text.transformer", ("text", "transformer"))]
    for prefix, path in candidates:
        mod = model
        for attr in path:
            mod = getattr(mod, attr, None)
            if mod is None:
                break
        if mod is not None and isinstance(getattr(mod, "resblocks", None), nn.ModuleList):
            return prefix + ".resblocks", mod.resblocks
    raise ValueError(
        f"cannot find the {tower} tower blocks on {type(model).__name__}: expected "
        + " or ".join(f"`{p}.resblocks`" for p, _ in candidates)
    )


def _validate_blocks(blocks: Sequence[nn.Module], targets: Sequence[str], prefix: str) -> None:
    for i, block in enumerate(blocks):
        bp = f"{prefix}{i}"
        attn = getattr(block, "attn", None)
        if any(t.startswith("attn.") for t in targets):
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise TypeError(f"block {bp!r}: attn must be nn.MultiheadAttention with "
                                f"packed in_proj_weight, got {type(attn).__name__}")
        for t in targets:
            if t == "attn.in_proj":
                mod, tname = attn, "in_proj_weight"
            elif t == "attn.out_proj":
                mod, tname = attn.out_proj, "weight"
            else:
                lin = getattr(getattr(block, "mlp", None), t.split(".")[1], None)
                if isinstance(lin, LoRALinear):
                    raise ValueError(f"{bp}.{t} already has a LoRA adapter")
                if not isinstance(lin, nn.Linear):
                    raise TypeError(f"block {bp!r}: {t} must be nn.Linear, "
                                    f"got {type(lin).__name__}")
                continue
            if parametrize.is_parametrized(mod, tname):
                raise ValueError(f"{bp}.{t} already has a parametrization (LoRA added twice?)")


def add_lora_to_blocks(blocks: Iterable[nn.Module], rank: int, alpha: float,
                       targets: Sequence[str] = VALID_TARGETS, dropout: float = 0.0,
                       prefix: str = "") -> List[str]:
    """Add adapters to ``ResidualAttentionBlock``-like blocks (no freezing, no validation of
    towers). Blocks must have ``attn`` = ``nn.MultiheadAttention`` (packed q/k/v) and ``mlp``
    with ``c_fc``/``c_proj`` Linears. Returns the adapted weight names ``f"{prefix}{i}...."``.
    Use it for block copies that live outside the towers (e.g. a trainable last block).
    """
    targets, _ = _check_args(rank, targets, VALID_TOWERS, dropout)
    blocks = list(blocks)
    _validate_blocks(blocks, targets, prefix)  # check everything before modifying anything
    names: List[str] = []
    for i, block in enumerate(blocks):
        bp = f"{prefix}{i}."
        attn = getattr(block, "attn", None)
        for t in targets:
            if t == "attn.in_proj":
                _parametrize_weight(attn, "in_proj_weight", rank, alpha)
                names.append(bp + "attn.in_proj_weight")
            elif t == "attn.out_proj":
                _parametrize_weight(attn.out_proj, "weight", rank, alpha)
                names.append(bp + "attn.out_proj.weight")
            else:
                child = t.split(".")[1]
                mlp = block.mlp
                lin = getattr(mlp, child)
                wrapped = LoRALinear(lin, rank, alpha, dropout)
                _add_hook(wrapped, {"weight": "base.weight", "bias": "base.bias"})
                setattr(mlp, child, wrapped)
                names.append(bp + t + ".weight")
    return names


def add_lora(model: nn.Module, rank: int, alpha: float,
             targets: Sequence[str] = VALID_TARGETS,
             towers: Sequence[str] = VALID_TOWERS,
             dropout: float = 0.0) -> List[str]:
    """Freeze all non-LoRA parameters of ``model`` and add trainable LoRA adapters in place.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` (or anything with
            ``visual.transformer.resblocks`` / ``transformer.resblocks`` / ``text.transformer.resblocks``).
        rank: LoRA rank ``r >= 1``; ``alpha``: scale numerator (``scaling = alpha / rank``).
        targets: subset of ``VALID_TARGETS`` (``attn.in_proj``, ``attn.out_proj``, ``mlp.c_fc``,
            ``mlp.c_proj``).
        towers: subset of ``("image", "text")``.
        dropout: input dropout on the MLP adapters' branch (LoRALinear only).
    Returns:
        names of adapted weights, e.g. ``visual.transformer.resblocks.0.attn.in_proj_weight``.
    Raises:
        ValueError on an unknown target/tower, ``rank < 1``, a missing tower or a weight
        that already has an adapter.
    """
    targets, towers = _check_args(rank, targets, towers, dropout)
    resolved = [_tower_blocks(model, t) for t in towers]
    for prefix, blocks in resolved:
        _validate_blocks(list(blocks), targets, prefix + ".")
    existing = _lora_param_ids(model)  # adapters from an earlier call stay trainable
    for p in model.parameters():
        if id(p) not in existing:
            p.requires_grad_(False)
    names: List[str] = []
    for prefix, blocks in resolved:
        names += add_lora_to_blocks(blocks, rank, alpha, targets, dropout, prefix=prefix + ".")
    return names


# --------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------

def iter_lora_modules(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Yield ``(adapted weight name, adapter)`` for every LoRALinear / LoRAParametrization,
    in module order. Names are those returned by :func:`add_lora`."""
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


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------

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
        raise KeyError(
            f"LoRA state dict mismatch: {len(missing)} missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
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


# --------------------------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------------------------

def merge_lora(model: nn.Module) -> List[str]:
    """Fold every adapter into its base weight (``W += alpha/rank * B @ A``, regardless of the
    ``enabled`` flag) and remove LoRALinear wrappers / parametrizations, leaving a plain
    open_clip model with the original parameter names. Base parameters keep their
    ``requires_grad`` (False after :func:`add_lora`). Returns the merged weight names."""
    merged: List[str] = []
    for name, mod in list(model.named_modules()):
        pre = name + "." if name else ""
        if parametrize.is_parametrized(mod):
            for tname in list(mod.parametrizations.keys()):
                plist = mod.parametrizations[tname]
                if not any(isinstance(p, LoRAParametrization) for p in plist):
                    continue
                if len(plist) != 1:
                    raise RuntimeError(f"{pre}{tname}: cannot merge a LoRA stacked with other "
                                       "parametrizations")
                plist[0].enabled = True
                parametrize.remove_parametrizations(mod, tname, leave_parametrized=True)
                merged.append(pre + tname)
            _remove_hooks(mod)
        for cname, child in list(mod.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight.add_(child.delta_weight().to(child.base.weight.dtype))
                setattr(mod, cname, child.base)
                merged.append(f"{pre}{cname}.weight")
    return merged


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------

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


@contextlib.contextmanager
def lora_swapped(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True):
    """Context manager: load another LoRA state (e.g. EMA weights) and restore the live one
    on exit, also on exceptions. Run the forward inside under ``torch.no_grad()``: the swap
    copies in place, so a graph built inside cannot be back-propagated after the restore."""
    saved = lora_state_dict(model)
    load_lora_state_dict(model, state, strict=strict)
    try:
        yield model
    finally:
        load_lora_state_dict(model, saved, strict=True)
