"""Delayed parameter groups (ttd_d2.engine.delayed_start, TCL's decoder-only warm-up): learning
rate 0 before the start iteration, detectron2's schedule after it; SGD and AdamW (with weight
decay) leave the delayed parameters exactly as they are until then."""
import pytest
import torch
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from ttd_d2.engine.delayed_start import START_ITER, DelayedStartLRMultiplier, delay_parameters

MAX_ITER, START = 8, 3


def schedule():
    return WarmupParamScheduler(CosineParamScheduler(1, 0), 0.1, 2 / MAX_ITER)


def two_parameters(optimizer_cls, **kwargs):
    early, late = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = optimizer_cls([{"params": [early, late], "weight_decay": 0.1}], lr=0.5, **kwargs)
    delay_parameters(optimizer, [late], START)
    return optimizer, early, late


def test_delayed_groups_have_learning_rate_zero_until_their_start():
    optimizer, _, _ = two_parameters(torch.optim.SGD)
    assert [g.get(START_ITER, 0) for g in optimizer.param_groups] == [0, START]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.1]  # hyper-parameters kept
    scheduler = DelayedStartLRMultiplier(optimizer, schedule(), MAX_ITER)
    reference = LRMultiplier(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.5), schedule(), MAX_ITER)
    for it in range(MAX_ITER):
        early_lr, late_lr = (g["lr"] for g in optimizer.param_groups)
        expected = reference.optimizer.param_groups[0]["lr"]
        assert early_lr == pytest.approx(expected)
        assert late_lr == (0.0 if it < START else pytest.approx(expected)), it
        optimizer.step()
        reference.optimizer.step()
        scheduler.step()
        reference.step()


@pytest.mark.parametrize("optimizer_cls, kwargs", [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.AdamW, {})])
def test_delayed_parameters_do_not_move_before_their_start(optimizer_cls, kwargs):
    optimizer, early, late = two_parameters(optimizer_cls, **kwargs)
    scheduler = DelayedStartLRMultiplier(optimizer, schedule(), MAX_ITER)
    for it in range(START + 1):
        before = late.detach().clone()
        (early.sum() + 2 * late.sum()).backward()  # both get gradients at every step, as under DDP
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        assert torch.equal(late, before) == (it < START), it  # weight decay too waits for the start
    assert not torch.equal(early, torch.ones(2))


def test_delay_parameters_refuses_a_started_optimizer_and_unknown_parameters():
    p = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="not in the optimizer"):
        delay_parameters(optimizer, [torch.nn.Parameter(torch.ones(1))], START)
    p.sum().backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="before the optimizer's first step"):
        delay_parameters(optimizer, [p], START)


def test_without_delayed_parameters_the_schedule_is_detectron2s():
    def lrs(scheduler_cls):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))], lr=0.5)
        delay_parameters(optimizer, [], START)
        scheduler, seen = scheduler_cls(optimizer, schedule(), MAX_ITER), []
        for _ in range(MAX_ITER):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    assert lrs(DelayedStartLRMultiplier) == lrs(LRMultiplier)
