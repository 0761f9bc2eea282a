"""The moving average of the adapted weights and running with given deltas
(ttd_d2/modeling/lora/ema.py): the EMA of s*B*A by hand, ``lora_delta_override``, ``lora_deltas``
against the live model."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from lora_fixtures import all_close, frozen, outputs, perturb
from lora_fixtures import inputs, pair  # noqa: F401  (fixtures)
from ttd_d2.modeling.lora import (
    LoRALinear,
    LoRAParametrization,
    iter_lora_modules,
    lora_delta_override,
    lora_deltas,
    lora_disabled,
    lora_ema_update,
)


def _two_adapters():
    """A LoRALinear and a parametrized Linear (3 -> 2), rank 1, alpha 2 (scaling 2)."""
    model = torch.nn.Module()
    model.lin = LoRALinear(torch.nn.Linear(3, 2), rank=1, alpha=2.0)
    model.par = torch.nn.Linear(3, 2)
    parametrize.register_parametrization(model.par, "weight", LoRAParametrization(2, 3, rank=1, alpha=2.0))
    return frozen(model)


def _set_adapters(model, a, b):
    with torch.no_grad():
        for _, m in iter_lora_modules(model):
            m.lora_A.copy_(torch.tensor([a])), m.lora_B.copy_(torch.tensor(b).view(2, 1))


def test_ema_of_deltas_by_hand():
    """EMA of s*B*A (decay 0.5), not EMA(B) @ EMA(A), over an initialisation and two steps."""
    model = _two_adapters()
    ema = {}
    _set_adapters(model, [1.0, 1.0, 1.0], [0.0, 1.0])  # s B A = [[0, 0, 0], [2, 2, 2]]
    assert lora_ema_update(ema, model, decay=0.5) is ema
    assert set(ema) == {"lin.weight", "par.weight"}
    _set_adapters(model, [1.0, 0.0, 2.0], [1.0, 0.0])  # s B A = [[2, 0, 4], [0, 0, 0]]
    lora_ema_update(ema, model, decay=0.5)
    _set_adapters(model, [0.0, 1.0, 0.0], [2.0, 1.0])  # s B A = [[0, 4, 0], [0, 2, 0]]
    lora_ema_update(ema, model, decay=0.5)
    expected = torch.tensor([[0.5, 2.0, 1.0], [0.5, 1.5, 0.5]])
    for name in ema:  # 0.25 * D0 + 0.25 * D1 + 0.5 * D2
        torch.testing.assert_close(ema[name], expected)
    # the EMA tensors are not views of anything live
    _set_adapters(model, [5.0, 5.0, 5.0], [5.0, 5.0])
    torch.testing.assert_close(ema["lin.weight"], expected)
    with pytest.raises(KeyError):
        lora_ema_update({"foo": torch.zeros(2, 3)}, model, decay=0.9)
    with pytest.raises(RuntimeError, match="shape"):
        lora_ema_update({"lin.weight": torch.zeros(3, 2), "par.weight": torch.zeros(2, 3)}, model, decay=0.9)
    with pytest.raises(ValueError):
        lora_ema_update(ema, model, decay=1.5)


def test_delta_override_runs_with_given_deltas():
    model = _two_adapters()
    _set_adapters(model, [1.0, 0.0, 2.0], [1.0, 0.0])
    x = torch.randn(4, 3)
    live = model.lin(x), model.par.weight.clone()
    delta = torch.tensor([[0.5, 2.0, 1.0], [0.5, 1.5, 0.5]])
    base_w = model.lin.base.weight
    with lora_delta_override(model, {"lin.weight": delta, "par.weight": delta}):
        torch.testing.assert_close(model.lin(x), F.linear(x, base_w + delta, model.lin.base.bias))
        torch.testing.assert_close(model.par.weight, model.par.parametrizations.weight.original + delta)
        with lora_disabled(model):  # adapters off still means the base model
            assert torch.equal(model.par.weight, model.par.parametrizations.weight.original)
    assert torch.equal(model.lin(x), live[0]) and torch.equal(model.par.weight, live[1])
    with pytest.raises(KeyError, match="missing"):
        with lora_delta_override(model, {"lin.weight": delta}):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with lora_delta_override(model, {"lin.weight": delta, "par.weight": delta}):
            raise RuntimeError("boom")
    assert all(m.delta_override is None for _, m in iter_lora_modules(model))


def test_deltas_match_merge(pair, inputs):
    _, model, names = pair
    perturb(model)
    deltas = lora_deltas(model)
    assert list(deltas) == names and all(not d.requires_grad for d in deltas.values())
    adapted = outputs(model, inputs)
    with lora_delta_override(model, deltas):  # W + (s B A) given as tensors = the live model
        assert all_close(outputs(model, inputs), adapted)


def test_nested_delta_override_restores_the_outer_one():
    """Leaving an inner override gives back the outer deltas, not none at all."""
    model = _two_adapters()
    outer = {"lin.weight": torch.ones(2, 3), "par.weight": torch.ones(2, 3)}
    inner = {"lin.weight": torch.zeros(2, 3), "par.weight": torch.zeros(2, 3)}
    with lora_delta_override(model, outer):
        with lora_delta_override(model, inner):
            assert all(m.delta_override is inner[n] for n, m in iter_lora_modules(model))
        assert all(m.delta_override is outer[n] for n, m in iter_lora_modules(model))
        torch.testing.assert_close(model.par.weight, model.par.parametrizations.weight.original + 1.0)
    assert all(m.delta_override is None for _, m in iter_lora_modules(model))
