"""Where the TTD meta-architecture puts LoRA adapters, so that everything trainable is trained.

The rule. DistributedDataParallel as detectron2 wraps models (``find_unused_parameters=False``)
expects a gradient for every trainable parameter at every step; a trainable parameter that no
loss reaches is a silent no-op in one process and a crash ("Expected to have finished
reduction in the prior iteration") in several. So:

* **TTD on** (base weights frozen): adapters go only on modules that the training forward
  uses on a gradient path:

  - text tower, every block: the caption and the tag embeddings enter both losses with grad;
  - image tower, the last ``IMAGE_LAYERS`` blocks (0 = all; the blocks before run once without
    a graph): the dense path runs through them, except the **last block's MLP under the
    clearclip and naclip heads**, which skip the MLP and its residual. Those two adapters are
    added only when a loss reads the global embedding (the vanilla last block) with grad,
    i.e. ``MODEL.CLIP.CONTRASTIVE_WEIGHT > 0``;
  - the global embedding that only tag scoring reads (teacher ``self`` with ``s_image`` /
    ``image_text``) is computed without a graph (``CLIPDense.forward_head(global_grad=False)``),
    so it does not count as a gradient path;
  - the backbone says which blocks the two paths run (``lora_image_blocks``): for ``TCL`` the
    dense path is the trunk plus the head's copied last block (adapted like a last block), and
    the CLIP's own last block, run only by the global embedding, is adapted only with the
    contrastive loss; modules the backbone trains in full (``ttd_trained_modules``: TCL's
    decoder with ``MODEL.TCL.TRAIN_DECODER``) are unfrozen;
  - the masker's w, b train (both losses read the masks).
* **TTD off** (contrastive pretraining): every CLIP weight trains (the global path and the
  text tower use all of them); the masker is frozen, since no loss reads it. A
  ``MODEL.TTD.LORA.WEIGHTS`` file is folded into the weights first (the start of training);
  without the contrastive loss (evaluation) its adapters are applied and frozen.
* **A backbone's own objective** (TCL's, ``MODEL.TCL.LOSS``; TTD off, no adapters): what the
  backbone leaves trainable (TCL's head) and the masker train, all reached by its losses.
* Adapters a LoRA file has where this config's forward gives them no gradient (the MLP above,
  from a run with the contrastive loss) are applied and frozen (:func:`load_lora_weights`).
"""
import logging
from typing import Dict, List, Sequence

import torch
from torch import nn

from ..lora import (
    VALID_TARGETS,
    VALID_TOWERS,
    add_lora,
    add_lora_to_blocks,
    check_lora_deltas,
    iter_lora_modules,
    load_lora_state_dict,
    lora_deltas,
    merge_lora,
)
from ..backbone.dense_heads import HEADS_WITHOUT_LAST_MLP
from ..lora.file import check_lora_settings, lora_settings, read_lora_file

logger = logging.getLogger(__name__)

MLP_TARGETS = ("mlp.c_fc", "mlp.c_proj")


def image_adapter_plan(num_blocks: int, targets: Sequence[str], image_layers: int, dense_mode: str,
                       global_grad: bool) -> Dict[int, List[str]]:
    """{image block index: the targets adapted there} under the rule of this module.

    Args:
        num_blocks: blocks of the image tower.
        targets: ``MODEL.TTD.LORA.TARGETS``.
        image_layers: ``MODEL.TTD.LORA.IMAGE_LAYERS`` (0 = all blocks).
        dense_mode: ``MODEL.CLIP.DENSE_MODE``.
        global_grad: whether a loss reads the global embedding with grad.
    """
    if not 0 <= image_layers <= num_blocks:
        raise ValueError(f"MODEL.TTD.LORA.IMAGE_LAYERS must be in [0, {num_blocks}], got {image_layers}")
    first = num_blocks - (image_layers or num_blocks)
    plan = {i: list(targets) for i in range(first, num_blocks)}
    if dense_mode in HEADS_WITHOUT_LAST_MLP and not global_grad:
        plan[num_blocks - 1] = [t for t in targets if t not in MLP_TARGETS]
    return {i: t for i, t in plan.items() if t}


def add_ttd_adapters(backbone: nn.Module, rank: int, alpha: float, targets: Sequence[str], towers: Sequence[str],
                     image_layers: int, global_grad: bool) -> int:
    """Freeze ``backbone.clip`` and add the adapters of :func:`image_adapter_plan` on the blocks
    of the dense path, on the global-only blocks when ``global_grad``, and on every text block
    (``backbone.lora_image_blocks()``). Returns the number of leading image blocks without
    adapters (they run once, without a graph, for student and teacher)."""
    clip = backbone.clip
    clip.requires_grad_(False)
    if "text" in towers:
        add_lora(clip, rank, alpha, targets=targets, towers=["text"])
    blocks, global_blocks = backbone.lora_image_blocks()
    plan = image_adapter_plan(len(blocks), targets, image_layers, backbone.dense_mode, global_grad)
    if "image" not in towers:
        return len(blocks) - 1
    for i, block_targets in plan.items():
        add_lora_to_blocks([blocks[i]], rank, alpha, block_targets)
    if global_grad and global_blocks:
        add_lora_to_blocks(global_blocks, rank, alpha, targets)
    return len(blocks) - (image_layers or len(blocks))


def optional_adapters(backbone: nn.Module) -> Dict[str, tuple]:
    """{adapted weight name in ``backbone.clip``: (block, target)} of the adapters only the
    global embedding's gradient reaches (placed only with the contrastive loss): the last dense
    block's MLP (skipped by clearclip / naclip) and every target of the global-only blocks."""
    names = {id(m): n for n, m in backbone.clip.named_modules()}
    blocks, global_blocks = backbone.lora_image_blocks()
    pairs = [(blocks[-1], t) for t in MLP_TARGETS] + [(b, t) for b in global_blocks for t in VALID_TARGETS]
    weight = {"attn.in_proj": "attn.in_proj_weight", "attn.out_proj": "attn.out_proj.weight"}
    return {f"{names[id(b)]}.{weight.get(t, t + '.weight')}": (b, t) for b, t in pairs}


def ttd_trained_parameters(backbone: nn.Module) -> Dict[str, nn.Parameter]:
    """{name in ``backbone.clip``: parameter} of the modules TTD trains in full
    (``backbone.ttd_trained_modules()``: TCL's decoder with ``MODEL.TCL.TRAIN_DECODER``)."""
    names = {id(p): n for n, p in backbone.clip.named_parameters()}
    return {names[id(p)]: p for module in backbone.ttd_trained_modules() for p in module.parameters()}


def _load_trained(clip: nn.Module, trained: Dict, path: str) -> None:
    """Copy a LoRA file's "trained" weights (by name in ``clip``) into ``clip``."""
    params = dict(clip.named_parameters())
    unknown = [n for n in trained if n not in params]
    wrong = [f"{n}: file {tuple(t.shape)} vs model {tuple(params[n].shape)}" for n, t in trained.items()
             if n in params and tuple(t.shape) != tuple(params[n].shape)]
    if unknown or wrong:
        raise ValueError(f"MODEL.TTD.LORA.WEIGHTS '{path}': its trained weights do not fit this model: unknown "
                         f"{unknown[:5]}, shapes {wrong[:5]} (a file of another backbone, MODEL.BACKBONE.NAME?)")
    with torch.no_grad():
        for n, t in trained.items():
            params[n].copy_(t)


def load_lora_weights(backbone: nn.Module, masker: nn.Module, content: Dict, path: str, rank: int,
                      alpha: float) -> None:
    """Copy a LoRA file's adapters (into the adapters :func:`add_ttd_adapters` placed) and masker.

    The one place where file and config may differ is :func:`optional_adapters` (the last
    image block's MLP under clearclip / naclip; TCL's CLIP's own last block), adapted only when
    the contrastive loss trained the global embedding: a file that has those adapters gets them
    applied (frozen: no loss of this config reaches them), and a file without them leaves this
    config's at their no-op start. The file's "trained" weights (TCL's decoder) are copied in;
    they train on only where this config trains them too.
    """
    clip = backbone.clip
    optional = optional_adapters(backbone)
    placed = {name for name, _ in iter_lora_modules(clip)}
    extra = [n for n in optional if n + ".lora_A" in content["lora"] and n not in placed]
    for name in extra:
        block, target = optional[name]
        add_lora_to_blocks([block], rank, alpha, [target])
    for name, adapter in iter_lora_modules(clip):
        if name in extra:
            adapter.requires_grad_(False)
    try:
        result = load_lora_state_dict(clip, content["lora"], strict=False)
    except RuntimeError as e:  # shapes differ although the recorded settings match: an edited file
        raise ValueError(f"MODEL.TTD.LORA.WEIGHTS '{path}' does not fit this model although its settings do "
                         f"(the file was edited or written by another tool): {e}") from e
    missing = [k for k in result.missing_keys if k.rsplit(".", 1)[0] not in optional]
    if missing or result.unexpected_keys:
        raise ValueError(f"MODEL.TTD.LORA.WEIGHTS '{path}' does not fit this model although its settings do: "
                         f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    masker.load_state_dict(content["masker"])
    _load_trained(clip, content.get("trained", {}), path)


def setup_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = VALID_TARGETS,
               towers: Sequence[str] = VALID_TOWERS, image_layers: int = 0, weights: str = "", merge: bool = False,
               arch: str = "") -> None:
    """Set up the adapters of a ``TTD`` model (``MODEL.TTD.LORA.*``; ``arch`` "" = unchecked).

    Freezes the base model and adds adapters by the rule of this module; loads the LoRA file
    ``weights`` after checking its settings; starts an EMA teacher at the loaded adapters
    (or at the file's EMA); merges when asked. Without TTD the adapters are frozen, or merged
    into the weights when the contrastive loss trains all of them. Sets
    ``model.shared_image_blocks`` and ``model.lora_settings``; fills ``model.ema_teacher``.
    """
    clip = model.backbone.clip
    unknown = set(towers) - set(VALID_TOWERS)
    if unknown or not towers:
        raise ValueError(f"MODEL.TTD.LORA.TOWERS {list(towers)}: choose from {VALID_TOWERS}")
    model.shared_image_blocks = add_ttd_adapters(model.backbone, rank, alpha, targets, towers, image_layers,
                                                 model._global_grad)
    if model.ttd_enabled:
        for module in model.backbone.ttd_trained_modules():
            module.requires_grad_(True)  # a loss reaches it: the dense path runs through it
    adapted_image_blocks = len(clip.visual.transformer.resblocks) - model.shared_image_blocks if "image" in towers else 0
    model.lora_settings = lora_settings(rank, alpha, targets, towers, adapted_image_blocks, arch, model.backbone.dense_mode)
    content = None
    if weights:
        content = read_lora_file(weights)
        check_lora_settings(content["settings"], model.lora_settings, weights,
                            keys={"dense_mode": model.backbone.DENSE_MODE_KEY})
        load_lora_weights(model.backbone, model.masker, content, weights, rank, alpha)
        logger.info("Loaded LoRA weights from %s", weights)
    if model.ttd_enabled and model.teacher == "ema":
        ema = lora_deltas(clip)  # starts at the loaded adapters unless the file has its EMA
        if content is not None and "ema" in content:
            ema = content["ema"]
            check_lora_deltas(ema, clip, f"the EMA of {weights}")
        for name, delta in ema.items():
            model.ema_teacher.register_buffer(name.replace(".", "__"), delta.to(clip.logit_scale).clone())
    contrastive_only = not model.ttd_enabled and model._global_grad
    if merge or contrastive_only:
        merge_lora(clip)
    if not model.ttd_enabled:
        clip.requires_grad_(contrastive_only)  # contrastive training trains every (merged) weight
