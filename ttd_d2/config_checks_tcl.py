"""Config checks of the TCL backbone (``MODEL.TCL``, and the keys that mean something else under
it) and of TCL's own training objective (``MODEL.TCL.LOSS``, ``MODEL.TCL.GUMBEL_TAU``,
``MODEL.TCL.DECODER_ONLY_ITERS``); ``config_checks.py`` calls them."""
import inspect
import math
from typing import List

from detectron2.modeling import BACKBONE_REGISTRY

from .config_checks_values import Problem, choice, flag, number
from .modeling.backbone.dense_heads import DENSE_MODES
from .modeling.backbone.tcl import TCL
from .modeling.backbone.tcl_decoder import CONV_ALGORITHMS


def is_tcl(name: str) -> bool:
    """Whether ``name`` is the registered TCL backbone (or a subclass of it)."""
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


def tcl_backbone_problems(cfg) -> List[Problem]:
    """MODEL.TCL, and the keys that mean something else under the TCL backbone."""
    tcl, on_tcl = cfg.MODEL.TCL, is_tcl(cfg.MODEL.BACKBONE.NAME)
    weights_ok = isinstance(tcl.WEIGHTS, str)
    return [
        None if weights_ok else f"MODEL.TCL.WEIGHTS = {tcl.WEIGHTS!r}: must be a path to a TCL checkpoint or ''",
        f"MODEL.TCL.WEIGHTS = {tcl.WEIGHTS!r} is set but MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME!r}: only "
        "the TCL backbone reads it (set MODEL.BACKBONE.NAME TCL, or MODEL.TCL.WEIGHTS '')"
        if weights_ok and tcl.WEIGHTS and not on_tcl else None,
        flag("MODEL.TCL.MASKER_FROM_WEIGHTS", tcl.MASKER_FROM_WEIGHTS),
        f"MODEL.MASKER.INIT_W / INIT_B = {cfg.MODEL.MASKER.INIT_W}, {cfg.MODEL.MASKER.INIT_B} would be ignored: "
        "MODEL.TCL.MASKER_FROM_WEIGHTS True starts the masker at the TCL checkpoint's w, b. Set "
        "MODEL.TCL.MASKER_FROM_WEIGHTS False to start from MODEL.MASKER, or leave INIT_W / INIT_B at their defaults"
        if on_tcl and weights_ok and tcl.WEIGHTS and tcl.MASKER_FROM_WEIGHTS
        and (cfg.MODEL.MASKER.INIT_W, cfg.MODEL.MASKER.INIT_B) != MASKER_DEFAULTS else None,
        flag("MODEL.TCL.TRAIN_DECODER", tcl.TRAIN_DECODER),
        _pixel_statistics(tcl.PIXEL_MEAN, tcl.PIXEL_STD),
        f"MODEL.CLIP.DENSE_MODE = {cfg.MODEL.CLIP.DENSE_MODE!r}: the TCL backbone runs its copied last block as "
        "MaskCLIP (or MODEL.TCL.DENSE_PATH); set it to maskclip" if on_tcl and cfg.MODEL.CLIP.DENSE_MODE != "maskclip" else None,
        choice("MODEL.TCL.DENSE_PATH", tcl.DENSE_PATH, DENSE_MODES),
        choice("MODEL.TCL.DECODER_CONV", tcl.DECODER_CONV, CONV_ALGORITHMS),
    ]


def tcl_training_problem(cfg) -> Problem:
    """Training the TCL backbone without TTD: only TCL's own objective reaches its weights."""
    if not is_tcl(cfg.MODEL.BACKBONE.NAME) or cfg.MODEL.TTD.ENABLED:
        return None
    if cfg.MODEL.CLIP.CONTRASTIVE_WEIGHT > 0:
        return ("MODEL.BACKBONE.NAME = 'TCL' with MODEL.TTD.ENABLED False and MODEL.CLIP.CONTRASTIVE_WEIGHT > 0: "
                "CLIP's contrastive loss reads only TCL's frozen CLIP, so nothing it reaches would train. Set "
                "MODEL.TTD.ENABLED True (TTD with LoRA on TCL), or train CLIP with MODEL.BACKBONE.NAME CLIPDense.")
    if cfg.MODEL.TCL.TRAIN_DECODER:
        return "MODEL.TCL.TRAIN_DECODER = True is read only with MODEL.TTD.ENABLED True: set it False"
    return None


TCL_LOSS_WEIGHTS = ("CONTRASTIVE_WEIGHT", "AREA_WEIGHT", "TV_WEIGHT")


def tcl_objective_on(cfg) -> bool:
    """Whether a ``MODEL.TCL.LOSS`` weight is a positive number (TCL's objective trains)."""
    weights = [cfg.MODEL.TCL.LOSS[k] for k in TCL_LOSS_WEIGHTS]
    return any(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights)


def tcl_objective_problems(cfg) -> List[Problem]:
    """The objective's keys (read by the TCL backbone, so by ``build_model``) and where it can run."""
    loss, on = cfg.MODEL.TCL.LOSS, tcl_objective_on(cfg)
    unit = (lambda v: 0 <= v <= 1), "in [0, 1]"
    lora_file = cfg.MODEL.TTD.LORA.WEIGHTS
    elsewhere = ("MODEL.TTD.ENABLED is True" if cfg.MODEL.TTD.ENABLED else
                 f"MODEL.TTD.LORA.WEIGHTS = {lora_file!r} is set" if lora_file else "")
    weights = (number(f"MODEL.TCL.LOSS.{k}", loss[k], lambda v: v >= 0, ">= 0", fix=" (0 = off)")
               for k in TCL_LOSS_WEIGHTS)
    return [
        *weights,
        number("MODEL.TCL.LOSS.POSITIVE_AREA_PRIOR", loss.POSITIVE_AREA_PRIOR, *unit, fix=" (a mean mask area)"),
        number("MODEL.TCL.LOSS.NEGATIVE_AREA_PRIOR", loss.NEGATIVE_AREA_PRIOR, *unit, fix=" (a mean mask area)"),
        number("MODEL.TCL.LOSS.INIT_TEMPERATURE", loss.INIT_TEMPERATURE, lambda v: v >= 0.01, ">= 0.01",
                fix=" (the logit scale 1 / T is capped at 100)"),
        number("MODEL.TCL.GUMBEL_TAU", cfg.MODEL.TCL.GUMBEL_TAU, lambda v: v > 0, "> 0"),
        f"MODEL.TCL.LOSS weights > 0 but MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME!r}: TCL's objective trains "
        "the TCL backbone; set MODEL.BACKBONE.NAME TCL, or the MODEL.TCL.LOSS weights 0"
        if on and not is_tcl(cfg.MODEL.BACKBONE.NAME) else None,
        f"MODEL.TCL.LOSS weights > 0 and {elsewhere}: TCL's objective trains TCL's head from its frozen CLIP, TTD "
        "adapts a trained TCL with LoRA; train TCL first (MODEL.TTD.ENABLED False, no LoRA file), then TTD with "
        "the MODEL.TCL.LOSS weights 0" if on and elsewhere else None,
    ]


def decoder_warmup_problem(cfg) -> Problem:
    """``MODEL.TCL.DECODER_ONLY_ITERS`` (read by the trainer): an integer in [0, SOLVER.MAX_ITER),
    positive only when TCL's objective trains."""
    iters, max_iter = cfg.MODEL.TCL.DECODER_ONLY_ITERS, cfg.SOLVER.MAX_ITER
    problem = number("MODEL.TCL.DECODER_ONLY_ITERS", iters, lambda v: 0 <= v < max_iter,
                      f"in [0, SOLVER.MAX_ITER = {max_iter})", integer=True,
                      fix=" (the head's copied block trains after it; 0 = no warm-up)")
    if problem or iters == 0 or (is_tcl(cfg.MODEL.BACKBONE.NAME) and tcl_objective_on(cfg)):
        return problem
    return (f"MODEL.TCL.DECODER_ONLY_ITERS = {iters} is read only by TCL's objective (MODEL.BACKBONE.NAME TCL "
            "with a positive MODEL.TCL.LOSS weight): set it 0")
