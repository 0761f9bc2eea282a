"""Parameters that start training later than the others (TCL's decoder-only warm-up,
``MODEL.TCL.DECODER_ONLY_ITERS``), safely under DistributedDataParallel.

TCL itself sets ``requires_grad`` False on its copied block for the warm-up and back to True
after it. Under detectron2's DDP (``find_unused_parameters=False``, its gradient buckets fixed
when the model is wrapped) switching ``requires_grad`` mid-run is not allowed, and a parameter
without a gradient stalls the reduction. So every parameter keeps its gradient at every step,
and the delayed ones sit in their own optimizer groups whose learning rate is 0 before their
start iteration: with SGD and AdamW (whose weight decay is scaled by the learning rate too) a
step at learning rate 0 leaves a parameter exactly as it is. A gradient-side freeze (zeroed or
detached gradients) would not: AdamW would still decay the weights.

Difference from TCL: the optimizer's moment estimates of the delayed parameters run during the
warm-up (their gradients are computed), where TCL starts them afresh at its end.
"""
from typing import Iterable, List

import torch
from detectron2.solver.lr_scheduler import LRMultiplier

__all__ = ["DelayedStartLRMultiplier", "START_ITER", "delay_parameters"]

START_ITER = "start_iter"  # param-group key: the iteration from which the group's learning rate is non-zero


def delay_parameters(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], start_iter: int) -> None:
    """Move ``params`` into groups of their own (same hyper-parameters as the groups they come
    from) marked ``start_iter``, for :class:`DelayedStartLRMultiplier`. Call before the first step."""
    delayed = {id(p) for p in params}
    if not delayed or start_iter <= 0:
        return
    if optimizer.state:
        raise RuntimeError("delay_parameters must be called before the optimizer's first step")
    moved: List[dict] = []
    for group in optimizer.param_groups:
        mine = [p for p in group["params"] if id(p) in delayed]
        if mine:
            group["params"] = [p for p in group["params"] if id(p) not in delayed]
            moved.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine, START_ITER: start_iter})
    found = sum(len(g["params"]) for g in moved)
    if found != len(delayed):
        raise ValueError(f"delay_parameters: {len(delayed) - found} of the {len(delayed)} parameters are not in "
                         "the optimizer")
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    for group in moved:
        optimizer.add_param_group(group)


class DelayedStartLRMultiplier(LRMultiplier):
    """detectron2's ``LRMultiplier`` (every group: its base learning rate x the schedule's
    multiplier at this iteration), except that a group marked ``start_iter`` by
    :func:`delay_parameters` has learning rate 0 before that iteration. The schedule itself is
    not shifted: a delayed group joins at the multiplier of its start iteration."""

    def get_lr(self) -> List[float]:
        lrs = super().get_lr()
        groups = self.optimizer.param_groups
        return [0.0 if self.last_epoch < g.get(START_ITER, 0) else lr for lr, g in zip(lrs, groups)]
