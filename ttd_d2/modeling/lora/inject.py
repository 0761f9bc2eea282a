"""Adding adapters to open_clip towers, and folding them back into the weights.

* ``mlp.c_fc`` / ``mlp.c_proj`` (``nn.Linear`` called as modules) are wrapped by
  :class:`~.layers.LoRALinear`; the backward never forms a full weight gradient.
* ``attn.in_proj_weight`` (q, k, v stacked, ``[3C, C]``) and ``attn.out_proj.weight`` are read
  as raw tensors by ``nn.MultiheadAttention.forward`` (it never calls ``out_proj``) and by the
  custom last-block forwards of the dense heads. They get a :mod:`torch.nn.utils.parametrize`
  parametrization :class:`~.layers.LoRAParametrization`, so every attribute access sees the
  adapted weight; the blocks' own attention and the dense heads compute them as side branches
  instead (:mod:`.side_branch`: no full-size weight gradient).

After :func:`add_lora` the model's own ``state_dict()`` names the adapted base weights
``...attn.parametrizations.in_proj_weight.original``, ``...out_proj.parametrizations.weight.original``
and ``...mlp.c_fc.base.weight``. A load-state-dict pre-hook maps the plain open_clip names onto
them, so plain (pre-LoRA) checkpoints still load; they then only miss the LoRA keys.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import VALID_TARGETS, VALID_TOWERS, LoRALinear, LoRAParametrization
from .side_branch import use_side_branches
from .state import iter_lora_modules


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


# torch.nn.utils.parametrize gives every parametrized module a class of its own, into which it
# injects one property per parametrized tensor. torch.compile guards on a module's class, so the
# adapted blocks of a tower, whose attentions would all differ in class, could not share compiled
# graphs: on the GPU host the default TTD step compiled one graph per block and variant until it
# hit dynamo's recompile limit (benchmarks/README.md). Modules of one base class with the same
# parametrized tensors share one class instead (its properties depend only on the tensor's
# name); before torch changes a module's class (a new parametrized tensor, a removal), the module
# gets a private copy of it, so the shared class never changes.
_SHARED_CLASSES: Dict[Tuple[type, FrozenSet[str]], type] = {}


def _private_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a copy of its class (the same properties) of its own."""
    if parametrize.is_parametrized(module):
        cls = type(module)
        attrs = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, cls.__bases__, attrs)


def _share_class(module: nn.Module) -> None:
    """Move a parametrized ``module`` onto the class shared by every module of its base class
    with the same parametrized tensors (the first such module's class)."""
    cls = type(module)
    module.__class__ = _SHARED_CLASSES.setdefault((cls.__bases__[0], frozenset(module.parametrizations)), cls)


def _parametrize_weight(module: nn.Module, tensor_name: str, rank: int, alpha: float) -> None:
    if parametrize.is_parametrized(module, tensor_name):
        raise ValueError(f"{type(module).__name__}.{tensor_name} is already parametrized")
    w = getattr(module, tensor_name)
    p = LoRAParametrization(w.shape[0], w.shape[1], rank, alpha, device=w.device, dtype=w.dtype)
    _private_class(module)
    parametrize.register_parametrization(module, tensor_name, p)
    _share_class(module)
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


def tower_blocks(model: nn.Module, tower: str) -> Tuple[str, nn.ModuleList]:
    """``(prefix, resblocks)`` of an open_clip tower (CLIP or CustomTextCLIP layout), e.g.
    ``("visual.transformer.resblocks", ...)``."""
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
        if any(t.startswith("attn.") for t in targets) and hasattr(block, "attention"):
            use_side_branches(block)  # the adapted projections as side branches (side_branch.py)
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
    resolved = [tower_blocks(model, t) for t in towers]
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


def merge_lora(model: nn.Module) -> List[str]:
    """Fold every adapter into its base weight (``W += alpha/rank * B @ A``, regardless of the
    ``enabled`` flag) and remove LoRALinear wrappers / parametrizations, leaving a plain
    open_clip model with the original parameter names. Base parameters keep their
    ``requires_grad`` (False after :func:`add_lora`). Blocks keep the batch-first attention
    (``side_branch.use_side_branches``), which reads plain weights as they are. Returns the
    merged weight names."""
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
                plist[0].enabled, plist[0].delta_override = True, None
                _private_class(mod)  # torch edits the module's class: not the shared one
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
