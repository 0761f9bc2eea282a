"""Config validation at build time: every ttd_d2 key and the detectron2 keys ttd_d2 relies on.

- ``check_model_config(cfg)``: the keys of the model (``MODEL.*``, ``INPUT.FORMAT``), called by
  ``TTD.from_config`` (so by ``build_model``, also under ``--eval-only``) before CLIP is loaded.
- ``check_training_config(cfg)``: the keys only training reads (``SOLVER.*``, ``INPUT.TRAIN_SIZE``,
  ``INPUT.RANDOM_FLIP``, ``DATASETS.TRAIN``, "is there anything to train"), called by
  ``TTDTrainer.__init__`` before detectron2 builds the model, the optimizer and the data loaders.
- ``check_trainable(model)``: at least one parameter requires grad, called by
  ``TTDTrainer.build_optimizer`` (after the model, before the data loaders).

Each raises one ``ConfigError`` (a ``ValueError``) that lists every problem found, each naming
the key, the value, what is allowed and, where it is not obvious, the fix;
``model_config_problems`` and ``training_config_problems`` return the same sentences as a list,
for ``engine.preflight``, which reports them before any output. The lists of valid values are the ones
the code uses (``DISTANCES``, ``SCORING_METHODS``, ``DENSE_MODES``, ``TEACHERS``,
``VALID_TARGETS``, ``VALID_TOWERS``). Constructors and pure functions keep their own argument
checks for callers that bypass the config.
"""
import inspect
from typing import List, Optional, Tuple

import torch
from detectron2.modeling import BACKBONE_REGISTRY

from .config_checks_protocol import protocol_problems
from .config_checks_streams import stream_problems
from .config_checks_tcl import (decoder_warmup_problem, tcl_backbone_problems, tcl_objective_on, tcl_objective_problems,
                                tcl_training_problem)
from .config_checks_values import ConfigError, Problem, betas, choice, flag, names, number, raise_problems, templates
from .modeling.backbone.clip_dense import CLIPDense
from .modeling.backbone.clip_loading import vision_config
from .modeling.backbone.dense_heads import DENSE_MODES
from .modeling.compile import COMPILE_MODES, compile_backends
from .modeling.lora import VALID_TARGETS, VALID_TOWERS
from .modeling.meta_arch.ttd import TEACHERS
from .modeling.ttd.losses import DISTANCES, TARGET_NORMS
from .modeling.ttd.scoring import SCORING_METHODS

__all__ = ["OPTIMIZERS", "ConfigError", "check_model_config", "check_trainable", "check_training_config",
           "model_config_problems", "training_config_problems"]

OPTIMIZERS = ("ADAMW", "SGD")  # SOLVER.OPTIMIZER, upper-cased (TTDTrainer.build_optimizer)
RANDOM_FLIPS = ("none", "horizontal", "vertical")  # INPUT.RANDOM_FLIP (CaptionTrainMapper)


def _backbone(name: str) -> Problem:
    """TTD needs a CLIPDense (open_clip model, dense heads, text tower)."""
    try:
        entry = BACKBONE_REGISTRY.get(name)
    except KeyError:
        entry = None
    if inspect.isclass(entry) and issubclass(entry, CLIPDense):
        return None
    return f"MODEL.BACKBONE.NAME = {name!r}: the TTD meta-architecture needs 'CLIPDense' (or a registered subclass)"


def _patch_and_depth(cfg) -> Tuple[Optional[int], Optional[int]]:
    """(patch size, number of image blocks) of MODEL.CLIP.ARCH from open_clip's model config,
    or None for what cannot be read here (``load_clip`` then raises the real error)."""
    vision = vision_config(cfg.MODEL.CLIP.ARCH) or {}
    patch, depth = vision.get("patch_size"), vision.get("layers")
    return (patch if isinstance(patch, int) else None), (depth if isinstance(depth, int) else None)


def _nothing_to_train(cfg) -> Problem:
    clip, ttd = cfg.MODEL.CLIP, cfg.MODEL.TTD
    if not ttd.ENABLED and clip.CONTRASTIVE_WEIGHT == 0 and not tcl_objective_on(cfg):
        why = "MODEL.TTD.ENABLED is False, MODEL.CLIP.CONTRASTIVE_WEIGHT and the MODEL.TCL.LOSS weights are 0"
    elif ttd.ENABLED and max(clip.CONTRASTIVE_WEIGHT, ttd.LOSS.DISTILL_WEIGHT, ttd.LOSS.TAG_WEIGHT) <= 0:
        why = "MODEL.TTD.LOSS.DISTILL_WEIGHT, MODEL.TTD.LOSS.TAG_WEIGHT and MODEL.CLIP.CONTRASTIVE_WEIGHT are all 0"
    else:
        return None
    return (f"nothing to train: {why}. Set MODEL.TTD.ENABLED True (TTD with LoRA), a positive "
            "MODEL.CLIP.CONTRASTIVE_WEIGHT (CLIP training) or MODEL.TCL.LOSS weights (TCL's objective, backbone "
            "TCL); to evaluate only, use --eval-only.")


def check_model_config(cfg) -> None:
    """Check the keys the TTD model and its evaluation read; raise ``ConfigError`` listing the problems."""
    raise_problems(model_config_problems(cfg), "model")


def model_config_problems(cfg) -> List[str]:
    """One sentence per invalid key of :func:`check_model_config`, or []."""

    clip, ttd, lora, test = cfg.MODEL.CLIP, cfg.MODEL.TTD, cfg.MODEL.TTD.LORA, cfg.MODEL.SEG_INFERENCE
    patch, depth = _patch_and_depth(cfg)
    non_negative, positive = ((lambda v: v >= 0), ">= 0"), ((lambda v: v > 0), "> 0")
    unit = (lambda v: 0 <= v <= 1), "in [0, 1]"
    patch_text = f" ({patch})" if patch else ""
    crop = test.SLIDE_CROP
    problems = [
        _backbone(cfg.MODEL.BACKBONE.NAME),
        choice("INPUT.FORMAT", cfg.INPUT.FORMAT, ("RGB",), " (open_clip models take RGB images)"),
        # MODEL.CLIP (ARCH and PRETRAINED are checked by load_clip, inside its distributed guard)
        choice("MODEL.CLIP.DENSE_MODE", clip.DENSE_MODE, DENSE_MODES),
        number("MODEL.CLIP.ATTN_SCALE", clip.ATTN_SCALE, *non_negative, fix=" (0 = 1/sqrt(head_dim))"),
        number("MODEL.CLIP.NACLIP_SIGMA", clip.NACLIP_SIGMA, *positive, fix=" (patches)"),
        templates("MODEL.CLIP.PROMPT_TEMPLATES", clip.PROMPT_TEMPLATES),
        number("MODEL.CLIP.CONTRASTIVE_WEIGHT", clip.CONTRASTIVE_WEIGHT, *non_negative),
        flag("MODEL.CLIP.BF16", clip.BF16),
        flag("MODEL.CLIP.BF16_CPU", clip.BF16_CPU),
        choice("MODEL.CLIP.COMPILE.MODE", clip.COMPILE.MODE, COMPILE_MODES, " ('' = eager)"),
        choice("MODEL.CLIP.COMPILE.BACKEND", clip.COMPILE.BACKEND, compile_backends()) if clip.COMPILE.MODE else None,
        choice("MODEL.CLIP.COMPILE.TEXT_MODE", clip.COMPILE.TEXT_MODE, ("same",) + COMPILE_MODES, " ('same' = MODE)"),
        *tcl_backbone_problems(cfg),
        *tcl_objective_problems(cfg),
        # MODEL.MASKER: sigmoid(w * cos + b) must grow with the similarity
        number("MODEL.MASKER.INIT_W", cfg.MODEL.MASKER.INIT_W, *positive),
        number("MODEL.MASKER.INIT_B", cfg.MODEL.MASKER.INIT_B, lambda v: True, "(any finite value)"),
        # MODEL.TTD
        flag("MODEL.TTD.ENABLED", ttd.ENABLED),
        choice("MODEL.TTD.TAG_SCORING", ttd.TAG_SCORING, SCORING_METHODS + ("nltk",)),
        number("MODEL.TTD.TAG_THRESHOLD", ttd.TAG_THRESHOLD, *unit, fix=" (tag scores are probabilities)"),
        flag("MODEL.TTD.REMOVE_STOPWORDS", ttd.REMOVE_STOPWORDS),
        number("MODEL.TTD.MAX_TAGS", ttd.MAX_TAGS, lambda v: v >= 1, ">= 1", integer=True,
                fix=" (candidate tags kept per caption)"),
        choice("MODEL.TTD.TEACHER", ttd.TEACHER, TEACHERS),
        number("MODEL.TTD.EMA_DECAY", ttd.EMA_DECAY, *unit),
        choice("MODEL.TTD.TARGET_NORM", ttd.TARGET_NORM, TARGET_NORMS),
        choice("MODEL.TTD.LOSS.DISTANCE", ttd.LOSS.DISTANCE, DISTANCES),
        number("MODEL.TTD.LOSS.DISTILL_WEIGHT", ttd.LOSS.DISTILL_WEIGHT, *non_negative),
        number("MODEL.TTD.LOSS.TAG_WEIGHT", ttd.LOSS.TAG_WEIGHT, *non_negative),
        # MODEL.TTD.LORA (the LORA.WEIGHTS file, applied on any config, is checked where it is
        # loaded: ttd_lora.py)
        number("MODEL.TTD.LORA.RANK", lora.RANK, lambda v: v >= 1, ">= 1", integer=True),
        number("MODEL.TTD.LORA.ALPHA", lora.ALPHA, *positive, fix=" (adapters are scaled by ALPHA / RANK)"),
        names("MODEL.TTD.LORA.TARGETS", lora.TARGETS, VALID_TARGETS),
        names("MODEL.TTD.LORA.TOWERS", lora.TOWERS, VALID_TOWERS),
        number("MODEL.TTD.LORA.IMAGE_LAYERS", lora.IMAGE_LAYERS, lambda v: 0 <= v <= (v if depth is None else depth),
                f"in [0, {'the number of image blocks' if depth is None else depth}]", integer=True, fix=" (0 = all)"),
        flag("MODEL.TTD.LORA.MERGE_FOR_INFERENCE", lora.MERGE_FOR_INFERENCE),
        # MODEL.SEG_INFERENCE
        number("MODEL.SEG_INFERENCE.SLIDE_CROP", crop, lambda v: v == 0 or v >= (patch or 1),
                f"0 (whole image) or >= the patch size{patch_text}", integer=True),
        number("MODEL.SEG_INFERENCE.SLIDE_STRIDE", test.SLIDE_STRIDE, lambda v: v >= 0 and (crop <= 0 or v <= crop),
                f"in [0, MODEL.SEG_INFERENCE.SLIDE_CROP = {crop}]", integer=True,
                fix=" (0 = SLIDE_CROP; a larger stride leaves pixels that no window covers)"),
        number("MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD", test.BACKGROUND_THRESHOLD, lambda v: v <= 1, "<= 1",
                fix=" (a masker probability; < 0 uses the dataset's background_threshold metadata)"),
        flag("MODEL.SEG_INFERENCE.FLIP", test.FLIP),
        *protocol_problems(cfg),
        number("MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD", test.CAPTION_MASK_THRESHOLD, *unit),
    ]
    return [p for p in problems if p]


# detectron2's AMPTrainer autocasts the whole step to float16: cosine maps, masker, the softmax
# of s_pixel at logit scale 100, BCE's logs. ttd_d2 already runs the towers, where the FLOPs
# are, under bfloat16 autocast (MODEL.CLIP.BF16: float32's exponent range, so no loss scaling)
# and keeps maps and losses in float32. AMP would add only fp16 risk, so it is refused.
AMP_REFUSED = (
    "SOLVER.AMP.ENABLED = True: not supported. detectron2's AMPTrainer would run ttd_d2's cosine maps, masker "
    "and losses in float16. Set SOLVER.AMP.ENABLED False and keep MODEL.CLIP.BF16 True (the default: the CLIP "
    "towers run under bfloat16 autocast on CUDA, maps and losses stay float32); on GPUs without bfloat16, "
    "train in float32 (MODEL.CLIP.BF16 False)."
)
MERGE_REFUSED = (
    "MODEL.TTD.LORA.MERGE_FOR_INFERENCE = True: it folds the adapters into the weights, which is for evaluation "
    "(--eval-only); in training the adapters would be gone and the frozen teacher would be the student. Set it "
    "False to train."
)


def check_training_config(cfg) -> None:
    """Check the keys only training reads; raise ``ConfigError`` listing the problems.

    Not called by ``build_model``: ``--eval-only`` builds the same model and must not be refused
    for a training setting.
    """
    raise_problems(training_config_problems(cfg), "training")


def training_config_problems(cfg) -> List[str]:
    """One sentence per invalid key of :func:`check_training_config`, or []."""

    patch, _ = _patch_and_depth(cfg)
    patch_text = f" ({patch})" if patch else ""
    problems = [
        AMP_REFUSED if cfg.SOLVER.AMP.ENABLED else None,
        choice("SOLVER.OPTIMIZER", str(cfg.SOLVER.OPTIMIZER).upper(), OPTIMIZERS, " (case-insensitive)"),
        betas("SOLVER.BETAS", cfg.SOLVER.BETAS),
        _nothing_to_train(cfg),
        tcl_training_problem(cfg),
        decoder_warmup_problem(cfg),
        MERGE_REFUSED if cfg.MODEL.TTD.LORA.MERGE_FOR_INFERENCE else None,
        number("INPUT.TRAIN_SIZE", cfg.INPUT.TRAIN_SIZE, lambda v: v > 0 and v % (patch or 1) == 0,
                f"> 0 and a multiple of the patch size{patch_text}", integer=True,
                fix=" (the patch embedding drops the pixels past the last whole patch)"),
        choice("INPUT.RANDOM_FLIP", cfg.INPUT.RANDOM_FLIP, RANDOM_FLIPS),
        flag("DATALOADER.PACKED_BATCHES", cfg.DATALOADER.PACKED_BATCHES),
        None if len(cfg.DATASETS.TRAIN) or cfg.DATASETS.IMAGE_TEXT.SHARDS or cfg.DATASETS.IMAGE_TEXT.FOLDERS else
        "DATASETS.TRAIN = (): name at least one image-caption dataset (e.g. ('synth_image_text_train',)), "
        "or give DATASETS.IMAGE_TEXT.SHARDS or FOLDERS",
        *stream_problems(cfg.DATASETS.IMAGE_TEXT),
    ]
    return [p for p in problems if p]


def check_trainable(model: torch.nn.Module) -> None:
    """Raise ``ConfigError`` when no parameter of ``model`` requires grad."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            "nothing to train: no parameter of the model requires grad. With MODEL.TTD.ENABLED True the LoRA "
            "adapters and the masker train; with MODEL.CLIP.CONTRASTIVE_WEIGHT > 0 every CLIP weight does. "
            "Check code that freezes parameters after build_model."
        )
