"""Config checks of TCL's own training objective (``MODEL.TCL.LOSS``, ``MODEL.TCL.GUMBEL_TAU``,
``MODEL.TCL.DECODER_ONLY_ITERS``), split from ``config_checks.py``, which calls them and whose
helpers they use (so it imports this module where it calls it)."""
from typing import List

from .config_checks import Problem, _is_tcl, _number

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
    weights = (_number(f"MODEL.TCL.LOSS.{k}", loss[k], lambda v: v >= 0, ">= 0", fix=" (0 = off)")
               for k in TCL_LOSS_WEIGHTS)
    return [
        *weights,
        _number("MODEL.TCL.LOSS.POSITIVE_AREA_PRIOR", loss.POSITIVE_AREA_PRIOR, *unit, fix=" (a mean mask area)"),
        _number("MODEL.TCL.LOSS.NEGATIVE_AREA_PRIOR", loss.NEGATIVE_AREA_PRIOR, *unit, fix=" (a mean mask area)"),
        _number("MODEL.TCL.LOSS.INIT_TEMPERATURE", loss.INIT_TEMPERATURE, lambda v: v >= 0.01, ">= 0.01",
                fix=" (the logit scale 1 / T is capped at 100)"),
        _number("MODEL.TCL.GUMBEL_TAU", cfg.MODEL.TCL.GUMBEL_TAU, lambda v: v > 0, "> 0"),
        f"MODEL.TCL.LOSS weights > 0 but MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME!r}: TCL's objective trains "
        "the TCL backbone; set MODEL.BACKBONE.NAME TCL, or the MODEL.TCL.LOSS weights 0"
        if on and not _is_tcl(cfg.MODEL.BACKBONE.NAME) else None,
        f"MODEL.TCL.LOSS weights > 0 and {elsewhere}: TCL's objective trains TCL's head from its frozen CLIP, TTD "
        "adapts a trained TCL with LoRA; train TCL first (MODEL.TTD.ENABLED False, no LoRA file), then TTD with "
        "the MODEL.TCL.LOSS weights 0" if on and elsewhere else None,
    ]


def decoder_warmup_problem(cfg) -> Problem:
    """``MODEL.TCL.DECODER_ONLY_ITERS`` (read by the trainer): an integer in [0, SOLVER.MAX_ITER),
    positive only when TCL's objective trains."""
    iters, max_iter = cfg.MODEL.TCL.DECODER_ONLY_ITERS, cfg.SOLVER.MAX_ITER
    problem = _number("MODEL.TCL.DECODER_ONLY_ITERS", iters, lambda v: 0 <= v < max_iter,
                      f"in [0, SOLVER.MAX_ITER = {max_iter})", integer=True,
                      fix=" (the head's copied block trains after it; 0 = no warm-up)")
    if problem or iters == 0 or (_is_tcl(cfg.MODEL.BACKBONE.NAME) and tcl_objective_on(cfg)):
        return problem
    return (f"MODEL.TCL.DECODER_ONLY_ITERS = {iters} is read only by TCL's objective (MODEL.BACKBONE.NAME TCL "
            "with a positive MODEL.TCL.LOSS weight): set it 0")
