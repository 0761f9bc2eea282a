"""Hand-written LoRA for open_clip transformer towers (TTD step 2: only LoRA is trained).

TTD trains low-rank adapters on the attention and MLP projections of both CLIP towers while
every base weight stays frozen; the released checkpoint holds only the adapters. The package:

* :mod:`.layers`: the adapters, ``W + s * B @ A`` with ``s = alpha / rank``, ``A`` ``[r, in]``
  Kaiming-uniform, ``B`` ``[out, r]`` zeros (a fresh adapter is an exact no-op):
  :class:`LoRALinear` (side branch for the MLP Linears) and :class:`LoRAParametrization`
  (for the attention weights that ``nn.MultiheadAttention`` reads as raw tensors);
* :mod:`.inject`: :func:`add_lora`, :func:`add_lora_to_blocks`, :func:`merge_lora`;
* :mod:`.state`: finding adapters, switching them off (:func:`lora_disabled`), state dicts;
* :mod:`.ema`: the exact moving average of the adapted weights (of ``s * B @ A``) for an EMA
  teacher, and running with given deltas (:func:`lora_delta_override`).
* :mod:`.file`: LoRA files, the adapters with the settings they were trained with
  (docs/LORA_FILES.md).

Why not ``peft``: it pulls in ``transformers`` and its ``nn.MultiheadAttention`` support is
experimental; the few lines here are easier to audit and have no extra dependency.

Caveats:

* Every access of a parametrized weight recomputes ``W + s B A`` (``nn.MultiheadAttention``
  reads ``in_proj_weight`` 3-4 times per forward for its fast-path checks): ~``6 C^2 r`` flops
  per read, small next to the attention itself. For repeated inference use
  ``parametrize.cached()`` (do not toggle :func:`lora_disabled` inside it) or :func:`merge_lora`.
* Pickling the whole model (``torch.save(model)``) is not supported by ``parametrize``; use
  state dicts. ``copy.deepcopy`` works.
* ``torch.compile`` works (checked on CPU, torch 2.14, eval and train); the ``enabled`` flags
  are Python attributes, so toggling :func:`lora_disabled` recompiles once per state.
* Exactness: ``add_lora`` freezes the base weights, and on CPU ``F.linear`` on a non-contiguous
  input (MHA transposes to sequence-first) picks a different kernel when the weight does not
  require grad (~1e-6 differences). "Exactly equal to the base model" therefore refers to the
  base model with frozen parameters (which is what the frozen teacher is).
* ``alpha`` is not stored in :func:`lora_state_dict` (the rank is checked through the shapes);
  LoRA files (:mod:`.file`) record both, and every other setting, and loading checks them.
* ``dropout`` only applies to :class:`LoRALinear` targets (MLP); a weight parametrization has no
  input to drop.
"""
from .ema import check_lora_deltas, lora_delta_override, lora_deltas, lora_ema_update
from .inject import add_lora, add_lora_to_blocks, merge_lora, tower_blocks
from .layers import VALID_TARGETS, VALID_TOWERS, LoRALinear, LoRAParametrization
from .state import (
    LoRALoadResult,
    iter_lora_modules,
    load_lora_state_dict,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
)

__all__ = [
    "VALID_TARGETS",
    "VALID_TOWERS",
    "LoRALinear",
    "LoRAParametrization",
    "add_lora",
    "add_lora_to_blocks",
    "tower_blocks",
    "iter_lora_modules",
    "lora_parameters",
    "lora_disabled",
    "lora_state_dict",
    "load_lora_state_dict",
    "LoRALoadResult",
    "merge_lora",
    "lora_ema_update",
    "lora_deltas",
    "lora_delta_override",
    "check_lora_deltas",
]
