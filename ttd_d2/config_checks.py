"""Config validation at build time: every ttd_d2 key and the detectron2 keys ttd_d2 relies on.

- ``check_model_config(cfg)``: the keys of the model (``MODEL.*``, ``INPUT.FORMAT``), called by
  ``TTD.from_config`` (so by ``build_model``, also under ``--eval-only``) before CLIP is loaded.
- ``check_training_config(cfg)``: the keys only training reads (``SOLVER.*``, ``INPUT.TRAIN_SIZE``,
  ``INPUT.RANDOM_FLIP``, ``DATASETS.TRAIN``, "is there anything to train"), called by
  ``TTDTrainer.__init__`` before detectron2 builds the model, the optimizer and the data loaders.
- ``check_trainable(model)``: at least one parameter requires grad, called by
  ``TTDTrainer.build_optimizer`` (after the model, before the data loaders).

Each raises one ``ValueError`` that lists every problem found, each naming the key, the value,
what is allowed and, where it is not obvious, the fix. The lists of valid values are the ones
the code uses (``DISTANCES``, ``SCORING_METHODS``, ``DENSE_MODES``, ``TEACHERS``,
``VALID_TARGETS``, ``VALID_TOWERS``). Constructors and pure functions keep their own argument
checks for callers that bypass the config.
"""
import inspect
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import BACKBONE_REGISTRY

from .modeling.backbone.clip_dense import CLIPDense
from .modeling.backbone.clip_loading import vision_config
from .modeling.compile import COMPILE_MODES, compile_backends
from .modeling.backbone.dense_heads import DENSE_MODES
from .modeling.backbone.tcl import TCL
from .modeling.backbone.tcl_decoder import CONV_ALGORITHMS
from .modeling.lora import VALID_TARGETS, VALID_TOWERS
from .modeling.meta_arch.ttd import TEACHERS
from .modeling.ttd.losses import DISTANCES, TARGET_NORMS
from .modeling.ttd.scoring import SCORING_METHODS

__all__ = ["OPTIMIZERS", "check_model_config", "check_trainable", "check_training_config"]

OPTIMIZERS = ("ADAMW", "SGD")  # SOLVER.OPTIMIZER, upper-cased (TTDTrainer.build_optimizer)
RANDOM_FLIPS = ("none", "horizontal", "vertical")  # INPUT.RANDOM_FLIP (CaptionTrainMapper)

Problem = Optional[str]


def _raise(problems: List[Problem], what: str) -> None:
    problems = [p for p in problems if p]
    if problems:
        listed = "\n  - ".join(problems)
        raise ValueError(f"invalid {what} config ({len(problems)} problem(s)):\n  - {listed}")


def _choice(key: str, value, allowed: Sequence[str], fix: str = "") -> Problem:
    if value not in allowed:
        return f"{key} = {value!r} is unknown: use one of {', '.join(allowed)}{fix}"
    return None


def _flag(key: str, value) -> Problem:
    return None if isinstance(value, bool) else f"{key} = {value!r}: must be True or False"


def _number(key: str, value, ok: Callable[[float], bool], allowed: str, integer: bool = False,
            fix: str = "") -> Problem:
    """``value`` must be a finite number (an int when ``integer``) for which ``ok`` holds."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        return f"{key} = {value!r}: must be {'an integer' if integer else 'a number'} {allowed}{fix}"
    return None if ok(value) else f"{key} = {value!r}: must be {allowed}{fix}"


def _names(key: str, values, allowed: Sequence[str]) -> Problem:
    """A non-empty list of distinct names from ``allowed``."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        return f"{key} = {values!r}: must be a list of names from {', '.join(allowed)} (not a string)"
    unknown = [v for v in values if v not in allowed]
    if unknown or not values or len(set(values)) != len(values):
        return f"{key} = {list(values)!r}: must be a non-empty list of distinct names from {', '.join(allowed)}"
    return None


def _templates(key: str, templates) -> Problem:
    if isinstance(templates, (list, tuple)) and templates and all(isinstance(t, str) and "{}" in t for t in templates):
        return None
    return f"{key} = {templates!r}: must be a non-empty list of strings, each with '{{}}' for the word"


def _betas(key: str, betas) -> Problem:
    def beta(b):
        return isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1

    if isinstance(betas, (list, tuple)) and len(betas) == 2 and all(beta(b) for b in betas):
        return None
    return f"{key} = {betas!r}: must be two numbers in [0, 1) (AdamW's beta1, beta2)"


def _backbone(name: str) -> Problem:
    """TTD needs a CLIPDense (open_clip model, dense heads, text tower)."""
    try:
        entry = BACKBONE_REGISTRY.get(name)
    except KeyError:
        entry = None
    if inspect.isclass(entry) and issubclass(entry, CLIPDense):
        return None
    return f"MODEL.BACKBONE.NAME = {name!r}: the TTD meta-architecture needs 'CLIPDense' (or a registered subclass)"


def _is_tcl(name: str) -> bool:
    try:
        entry = BACKBONE_REGISTRY.get(name)
    except KeyError:
        return False
    return inspect.isclass(entry) and issubclass(entry, TCL)


def _pixel_statistics(mean, std) -> Problem:
    """MODEL.TCL.PIXEL_MEAN / PIXEL_STD: both [] (the CLIP's own) or both 3 fractions of 255."""
    def ok(values, low):
        return (isinstance(values, (list, tuple)) and len(values) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low(v) and v <= 1
            for v in values))

    if (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and not mean and not std) or (
            ok(mean, lambda v: v >= 0) and ok(std, lambda v: v > 0)):
        return None
    return (f"MODEL.TCL.PIXEL_MEAN = {mean!r}, MODEL.TCL.PIXEL_STD = {std!r}: must be 3 numbers each (RGB, "
            "fractions of 255: mean in [0, 1], std in (0, 1]), or [] for both to use the CLIP's own")


# add_ttd_config's MODEL.MASKER.INIT_W, INIT_B (TCL's initial masker; tests/test_config_checks.py
# checks they agree): other values under a TCL checkpoint's masker are a setting that does nothing.
MASKER_DEFAULTS = (10.0, -2.5)


def _tcl_problems(cfg) -> List[Problem]:
    """MODEL.TCL, and the keys that mean something else under the TCL backbone."""
    tcl, is_tcl = cfg.MODEL.TCL, _is_tcl(cfg.MODEL.BACKBONE.NAME)
    weights_ok = isinstance(tcl.WEIGHTS, str)
    return [
        None if weights_ok else f"MODEL.TCL.WEIGHTS = {tcl.WEIGHTS!r}: must be a path to a TCL checkpoint or ''",
        f"MODEL.TCL.WEIGHTS = {tcl.WEIGHTS!r} is set but MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME!r}: only "
        "the TCL backbone reads it (set MODEL.BACKBONE.NAME TCL, or MODEL.TCL.WEIGHTS '')"
        if weights_ok and tcl.WEIGHTS and not is_tcl else None,
        _flag("MODEL.TCL.MASKER_FROM_WEIGHTS", tcl.MASKER_FROM_WEIGHTS),
        f"MODEL.MASKER.INIT_W / INIT_B = {cfg.MODEL.MASKER.INIT_W}, {cfg.MODEL.MASKER.INIT_B} would be ignored: "
        "MODEL.TCL.MASKER_FROM_WEIGHTS True starts the masker at the TCL checkpoint's w, b. Set "
        "MODEL.TCL.MASKER_FROM_WEIGHTS False to start from MODEL.MASKER, or leave INIT_W / INIT_B at their defaults"
        if is_tcl and weights_ok and tcl.WEIGHTS and tcl.MASKER_FROM_WEIGHTS
        and (cfg.MODEL.MASKER.INIT_W, cfg.MODEL.MASKER.INIT_B) != MASKER_DEFAULTS else None,
        _flag("MODEL.TCL.TRAIN_DECODER", tcl.TRAIN_DECODER),
        _pixel_statistics(tcl.PIXEL_MEAN, tcl.PIXEL_STD),
        f"MODEL.CLIP.DENSE_MODE = {cfg.MODEL.CLIP.DENSE_MODE!r}: the TCL backbone runs its copied last block as "
        "MaskCLIP (or MODEL.TCL.DENSE_PATH); set it to maskclip" if is_tcl and cfg.MODEL.CLIP.DENSE_MODE != "maskclip" else None,
        _choice("MODEL.TCL.DENSE_PATH", tcl.DENSE_PATH, DENSE_MODES),
        _choice("MODEL.TCL.DECODER_CONV", tcl.DECODER_CONV, CONV_ALGORITHMS),
    ]


def _tcl_training(cfg) -> Problem:
    if not _is_tcl(cfg.MODEL.BACKBONE.NAME) or cfg.MODEL.TTD.ENABLED:
        return None
    if cfg.MODEL.CLIP.CONTRASTIVE_WEIGHT > 0:
        return ("MODEL.BACKBONE.NAME = 'TCL' with MODEL.TTD.ENABLED False and MODEL.CLIP.CONTRASTIVE_WEIGHT > 0: "
                "CLIP's contrastive loss reads only TCL's frozen CLIP, so nothing it reaches would train. Set "
                "MODEL.TTD.ENABLED True (TTD with LoRA on TCL), or train CLIP with MODEL.BACKBONE.NAME CLIPDense.")
    if cfg.MODEL.TCL.TRAIN_DECODER:
        return "MODEL.TCL.TRAIN_DECODER = True is read only with MODEL.TTD.ENABLED True: set it False"
    return None


def _patch_and_depth(cfg) -> Tuple[Optional[int], Optional[int]]:
    """(patch size, number of image blocks) of MODEL.CLIP.ARCH from open_clip's model config,
    or None for what cannot be read here (``load_clip`` then raises the real error)."""
    vision = vision_config(cfg.MODEL.CLIP.ARCH) or {}
    patch, depth = vision.get("patch_size"), vision.get("layers")
    return (patch if isinstance(patch, int) else None), (depth if isinstance(depth, int) else None)


def _nothing_to_train(cfg) -> Problem:
    from .config_checks_tcl import tcl_objective_on

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
    """Check the keys the TTD model and its evaluation read; raise ``ValueError`` listing the problems."""
    from .config_checks_tcl import tcl_objective_problems  # it imports this module's helpers
    from .config_checks_protocol import protocol_problems  # likewise

    clip, ttd, lora, test = cfg.MODEL.CLIP, cfg.MODEL.TTD, cfg.MODEL.TTD.LORA, cfg.MODEL.SEG_INFERENCE
    patch, depth = _patch_and_depth(cfg)
    non_negative, positive = ((lambda v: v >= 0), ">= 0"), ((lambda v: v > 0), "> 0")
    unit = (lambda v: 0 <= v <= 1), "in [0, 1]"
    patch_text = f" ({patch})" if patch else ""
    crop = test.SLIDE_CROP
    problems = [
        _backbone(cfg.MODEL.BACKBONE.NAME),
        _choice("INPUT.FORMAT", cfg.INPUT.FORMAT, ("RGB",), " (open_clip models take RGB images)"),
        # MODEL.CLIP (ARCH and PRETRAINED are checked by load_clip, inside its distributed guard)
        _choice("MODEL.CLIP.DENSE_MODE", clip.DENSE_MODE, DENSE_MODES),
        _number("MODEL.CLIP.ATTN_SCALE", clip.ATTN_SCALE, *non_negative, fix=" (0 = 1/sqrt(head_dim))"),
        _number("MODEL.CLIP.NACLIP_SIGMA", clip.NACLIP_SIGMA, *positive, fix=" (patches)"),
        _templates("MODEL.CLIP.PROMPT_TEMPLATES", clip.PROMPT_TEMPLATES),
        _number("MODEL.CLIP.CONTRASTIVE_WEIGHT", clip.CONTRASTIVE_WEIGHT, *non_negative),
        _flag("MODEL.CLIP.BF16", clip.BF16),
        _flag("MODEL.CLIP.BF16_CPU", clip.BF16_CPU),
        _choice("MODEL.CLIP.COMPILE.MODE", clip.COMPILE.MODE, COMPILE_MODES, " ('' = eager)"),
        _choice("MODEL.CLIP.COMPILE.BACKEND", clip.COMPILE.BACKEND, compile_backends()) if clip.COMPILE.MODE else None,
        _choice("MODEL.CLIP.COMPILE.TEXT_MODE", clip.COMPILE.TEXT_MODE, ("same",) + COMPILE_MODES, " ('same' = MODE)"),
        *_tcl_problems(cfg),
        *tcl_objective_problems(cfg),
        # MODEL.MASKER: sigmoid(w * cos + b) must grow with the similarity
        _number("MODEL.MASKER.INIT_W", cfg.MODEL.MASKER.INIT_W, *positive),
        _number("MODEL.MASKER.INIT_B", cfg.MODEL.MASKER.INIT_B, lambda v: True, "(any finite value)"),
        # MODEL.TTD
        _flag("MODEL.TTD.ENABLED", ttd.ENABLED),
        _choice("MODEL.TTD.TAG_SCORING", ttd.TAG_SCORING, SCORING_METHODS + ("nltk",)),
        _number("MODEL.TTD.TAG_THRESHOLD", ttd.TAG_THRESHOLD, *unit, fix=" (tag scores are probabilities)"),
        _flag("MODEL.TTD.REMOVE_STOPWORDS", ttd.REMOVE_STOPWORDS),
        _number("MODEL.TTD.MAX_TAGS", ttd.MAX_TAGS, lambda v: v >= 1, ">= 1", integer=True,
                fix=" (candidate tags kept per caption)"),
        _choice("MODEL.TTD.TEACHER", ttd.TEACHER, TEACHERS),
        _number("MODEL.TTD.EMA_DECAY", ttd.EMA_DECAY, *unit),
        _choice("MODEL.TTD.TARGET_NORM", ttd.TARGET_NORM, TARGET_NORMS),
        _choice("MODEL.TTD.LOSS.DISTANCE", ttd.LOSS.DISTANCE, DISTANCES),
        _number("MODEL.TTD.LOSS.DISTILL_WEIGHT", ttd.LOSS.DISTILL_WEIGHT, *non_negative),
        _number("MODEL.TTD.LOSS.TAG_WEIGHT", ttd.LOSS.TAG_WEIGHT, *non_negative),
        # MODEL.TTD.LORA (the LORA.WEIGHTS file, applied on any config, is checked where it is
        # loaded: ttd_lora.py)
        _number("MODEL.TTD.LORA.RANK", lora.RANK, lambda v: v >= 1, ">= 1", integer=True),
        _number("MODEL.TTD.LORA.ALPHA", lora.ALPHA, *positive, fix=" (adapters are scaled by ALPHA / RANK)"),
        _names("MODEL.TTD.LORA.TARGETS", lora.TARGETS, VALID_TARGETS),
        _names("MODEL.TTD.LORA.TOWERS", lora.TOWERS, VALID_TOWERS),
        _number("MODEL.TTD.LORA.IMAGE_LAYERS", lora.IMAGE_LAYERS, lambda v: 0 <= v <= (v if depth is None else depth),
                f"in [0, {'the number of image blocks' if depth is None else depth}]", integer=True, fix=" (0 = all)"),
        _flag("MODEL.TTD.LORA.MERGE_FOR_INFERENCE", lora.MERGE_FOR_INFERENCE),
        # MODEL.SEG_INFERENCE
        _number("MODEL.SEG_INFERENCE.SLIDE_CROP", crop, lambda v: v == 0 or v >= (patch or 1),
                f"0 (whole image) or >= the patch size{patch_text}", integer=True),
        _number("MODEL.SEG_INFERENCE.SLIDE_STRIDE", test.SLIDE_STRIDE, lambda v: v >= 0 and (crop <= 0 or v <= crop),
                f"in [0, MODEL.SEG_INFERENCE.SLIDE_CROP = {crop}]", integer=True,
                fix=" (0 = SLIDE_CROP; a larger stride leaves pixels that no window covers)"),
        _number("MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD", test.BACKGROUND_THRESHOLD, lambda v: v <= 1, "<= 1",
                fix=" (a masker probability; < 0 uses the dataset's background_threshold metadata)"),
        _flag("MODEL.SEG_INFERENCE.FLIP", test.FLIP),
        *protocol_problems(cfg),
        _number("MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD", test.CAPTION_MASK_THRESHOLD, *unit),
    ]
    _raise(problems, "model")


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
    """Check the keys only training reads; raise ``ValueError`` listing the problems.

    Not called by ``build_model``: ``--eval-only`` builds the same model and must not be refused
    for a training setting.
    """
    from .config_checks_streams import stream_problems  # they import this module's helpers
    from .config_checks_tcl import decoder_warmup_problem

    patch, _ = _patch_and_depth(cfg)
    patch_text = f" ({patch})" if patch else ""
    problems = [
        AMP_REFUSED if cfg.SOLVER.AMP.ENABLED else None,
        _choice("SOLVER.OPTIMIZER", str(cfg.SOLVER.OPTIMIZER).upper(), OPTIMIZERS, " (case-insensitive)"),
        _betas("SOLVER.BETAS", cfg.SOLVER.BETAS),
        _nothing_to_train(cfg),
        _tcl_training(cfg),
        decoder_warmup_problem(cfg),
        MERGE_REFUSED if cfg.MODEL.TTD.LORA.MERGE_FOR_INFERENCE else None,
        _number("INPUT.TRAIN_SIZE", cfg.INPUT.TRAIN_SIZE, lambda v: v > 0 and v % (patch or 1) == 0,
                f"> 0 and a multiple of the patch size{patch_text}", integer=True,
                fix=" (the patch embedding drops the pixels past the last whole patch)"),
        _choice("INPUT.RANDOM_FLIP", cfg.INPUT.RANDOM_FLIP, RANDOM_FLIPS),
        _flag("DATALOADER.PACKED_BATCHES", cfg.DATALOADER.PACKED_BATCHES),
        None if len(cfg.DATASETS.TRAIN) or cfg.DATASETS.IMAGE_TEXT.SHARDS or cfg.DATASETS.IMAGE_TEXT.FOLDERS else
        "DATASETS.TRAIN = (): name at least one image-caption dataset (e.g. ('synth_image_text_train',)), "
        "or give DATASETS.IMAGE_TEXT.SHARDS or FOLDERS",
        *stream_problems(cfg.DATASETS.IMAGE_TEXT),
    ]
    _raise(problems, "training")


def check_trainable(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` when no parameter of ``model`` requires grad."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "nothing to train: no parameter of the model requires grad. With MODEL.TTD.ENABLED True the LoRA "
            "adapters and the masker train; with MODEL.CLIP.CONTRASTIVE_WEIGHT > 0 every CLIP weight does. "
            "Check code that freezes parameters after build_model."
        )
