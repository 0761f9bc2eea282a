"""``low_rank_linear``'s autograd function for a frozen projection
(ttd_d2/modeling/lora/low_rank.py): the textbook values and gradients, with the branch reading
``x`` or its own (dropped-out) input, with or without an input gradient, under bf16 autocast;
and the input gradient formed in one product: no separate full-size add in the backward, and
under bf16 no larger an error than autograd's path."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ttd_d2.modeling.lora.layers import LoRALinear, LoRAParametrization
from ttd_d2.modeling.lora.low_rank import low_rank_linear


def _frozen_projection_and_adapter(seed=0, out_features=6, in_features=5, rank=2):
    torch.manual_seed(seed)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    lora = LoRAParametrization(out_features, in_features, rank=rank, alpha=6.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    return weight, bias, lora


def _backward_node_names(out):
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("separate_input", [False, True])
@pytest.mark.parametrize("input_grad", [True, False])
def test_values_and_gradients_are_the_textbook_ones(separate_input, input_grad):
    """x W^T + b + x_low (s B A)^T on a [2, 3, in] input: the output and the gradients of x,
    x_low, A and B, against the formula written out with autograd."""
    weight, bias, lora = _frozen_projection_and_adapter()
    x = torch.randn(2, 3, 5, requires_grad=input_grad)
    x_low = torch.randn(2, 3, 5, requires_grad=input_grad) if separate_input else None
    branch_in = x if x_low is None else x_low
    expected = F.linear(x, weight, bias) + torch.einsum("bni,oi->bno", branch_in, 3.0 * lora.lora_B @ lora.lora_A)
    got = low_rank_linear(x, weight, bias, lora, x_low)
    assert "_FrozenLowRankLinearBackward" in _backward_node_names(got)
    torch.testing.assert_close(got, expected)
    leaves = [lora.lora_A, lora.lora_B] + ([x] if input_grad else []) + ([x_low] if separate_input and input_grad else [])
    upstream = torch.randn_like(expected)
    grads = torch.autograd.grad((got * upstream).sum(), leaves)
    reference = torch.autograd.grad((expected * upstream).sum(), leaves)
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r)


def test_a_trainable_weight_keeps_autograd_and_its_gradient():
    """The function forms no weight gradient, so a projection that trains takes autograd's path."""
    weight, bias, lora = _frozen_projection_and_adapter()
    weight.requires_grad_(True)
    x = torch.randn(4, 5)
    out = low_rank_linear(x, weight, bias, lora)
    assert "_FrozenLowRankLinearBackward" not in _backward_node_names(out)
    (g,) = torch.autograd.grad(out.sum(), [weight])
    torch.testing.assert_close(g, torch.ones(4, 6).t() @ x)


def test_no_graph_without_gradients():
    weight, bias, lora = _frozen_projection_and_adapter()
    with torch.no_grad():
        out = low_rank_linear(torch.randn(4, 5), weight, bias, lora)
    assert out.grad_fn is None


class _CountFullSize(TorchDispatchMode):
    """Counts calls of the ``ops`` (overload packets) with an output of ``numel`` elements."""

    def __init__(self, numel, *ops):
        super().__init__()
        self.numel, self.ops, self.count = numel, ops, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in self.ops and isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.count += 1
        return out


ADDS = (torch.ops.aten.add,)
PRODUCTS = (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_)  # in place or not


def _autograd_reference(x, weight, bias, lora):
    """``low_rank_linear``'s products in its order, left to autograd: the rank-r product with
    the bias, then the frozen product accumulated into it (in ``x``'s dtype: in-place ops are
    outside autocast)."""
    dtype = x.dtype
    low = F.linear(x, lora.lora_A).to(dtype)
    y = torch.addmm(bias.to(dtype), low, (lora.scaling * lora.lora_B).t().to(dtype))
    return y.addmm_(x, weight.to(dtype).t())


def _input_gradient_ops(forward, *ops):
    """(count of ``ops`` with a [N, in] output in the backward, ``dx``) of ``forward(x, weight,
    bias, lora)`` on a fixed projection and input."""
    weight, bias, lora = _frozen_projection_and_adapter(out_features=24, in_features=16, rank=4)
    torch.manual_seed(1)
    x = torch.randn(40, 16, requires_grad=True)
    out = forward(x, weight, bias, lora)
    with _CountFullSize(x.numel(), *ops) as counter:
        out.backward(torch.randn(40, 24))
    return counter.count, x.grad


def test_the_input_gradient_needs_no_full_size_add():
    count, got = _input_gradient_ops(low_rank_linear, *ADDS)
    reference_count, expected = _input_gradient_ops(_autograd_reference, *ADDS)
    assert count == 0
    assert reference_count == 1  # the count above is not vacuous: autograd adds the two paths
    torch.testing.assert_close(got, expected)


def test_under_bf16_autocast_the_products_run_in_bf16_and_match_autograd():
    """Under CPU bf16 autocast (the GPU step's setting) the output is bf16 and the values and
    gradients equal autograd's path up to the order of the bf16 sums."""
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(32, 48), rank=4, alpha=8.0)
    layer.base.requires_grad_(False)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.3)
    x = torch.randn(3, 7, 32, requires_grad=True)
    upstream = torch.randn(3, 7, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
        reference = _autograd_reference(x.to(torch.bfloat16).reshape(-1, 32), layer.base.weight, layer.base.bias,
                                        layer).view(3, 7, 48)
    assert got.dtype == torch.bfloat16
    assert "_FrozenLowRankLinearBackward" in _backward_node_names(got)
    torch.testing.assert_close(got.float(), reference.float())
    leaves = [x, layer.lora_A, layer.lora_B]
    grads = torch.autograd.grad((got.float() * upstream).sum(), leaves)
    expected = torch.autograd.grad((reference.float() * upstream).sum(), leaves)
    for g, e in zip(grads, expected):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("delta_scale", [1e-4, 1e-2, 1e-1])
def test_bf16_input_gradient_is_as_close_to_float64_as_autograds(delta_scale):
    """Under bf16 the backward folds the adapter into the weight for the input gradient,
    ``dx = g bf16(W + s B A)``, instead of accumulating ``(g s B) A`` into ``g W``: a different
    rounding, not a larger one. Against float64, its error is within 5 % of autograd's path,
    whether ``s B A`` is far below the weight's bf16 resolution (1e-3 of ``|W|``), at 10 % or at
    100 % of it."""
    torch.manual_seed(0)
    out_features, in_features, tokens = 384, 256, 512
    weight, bias = 0.02 * torch.randn(out_features, in_features), 0.01 * torch.randn(out_features)
    lora = LoRAParametrization(out_features, in_features, rank=8, alpha=16.0)
    with torch.no_grad():
        lora.lora_B.normal_(0, delta_scale)
    x = torch.randn(tokens, in_features, requires_grad=True)
    upstream = torch.randn(tokens, out_features)
    delta = lora.scaling * lora.lora_B.double() @ lora.lora_A.double()
    exact = upstream.double() @ (weight.double() + delta)

    def input_gradient(forward):
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward()
        out.float().backward(upstream)
        return x.grad.double()

    folded = input_gradient(lambda: low_rank_linear(x, weight, bias, lora))
    accumulated = input_gradient(lambda: _autograd_reference(x.to(torch.bfloat16), weight, bias, lora))
    folded_error = ((folded - exact).norm() / exact.norm()).item()
    accumulated_error = ((accumulated - exact).norm() / exact.norm()).item()
    assert 0 < folded_error <= 1.05 * accumulated_error


def test_the_input_gradient_is_one_full_size_product():
    """The adapter is folded into the weight for ``dx``: one product with a [N, in] output in the
    backward, where accumulating ``(g s B) A`` into ``g W`` (in place or not) takes two."""
    assert _input_gradient_ops(low_rank_linear, *PRODUCTS)[0] == 1
    assert _input_gradient_ops(_autograd_reference, *PRODUCTS)[0] == 2  # the count is not vacuous


class _RecordProducts(TorchDispatchMode):
    """Records ``(op, inner dimension)`` of each matrix product with an output of ``numel``."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.products = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in PRODUCTS and isinstance(out, torch.Tensor) and out.numel() == self.numel:
            mat1 = args[0] if func.overloadpacket is torch.ops.aten.mm else args[1]
            self.products.append((func.overloadpacket, mat1.shape[-1]))
        return out


@pytest.mark.parametrize("grad", [True, False])
def test_the_frozen_product_accumulates_into_the_low_rank_one(grad):
    """The forward forms ``b + x_low A^T (s B)^T`` first and accumulates ``x W^T`` into it, so
    the add is the large product's epilogue: the last of the [N, out] products is the frozen one
    (inner dimension ``in``), in place. Accumulating the rank-r product afterwards would be a
    memory-bound pass over [N, out]. With and without gradients (the two code paths)."""
    weight, bias, lora = _frozen_projection_and_adapter(out_features=24, in_features=16, rank=4)
    x = torch.randn(40, 16, requires_grad=grad)
    with torch.set_grad_enabled(grad), _RecordProducts(40 * 24) as recorder:
        out = low_rank_linear(x, weight, bias, lora)
    assert recorder.products == [(torch.ops.aten.addmm, 4), (torch.ops.aten.addmm_, 16)]
    torch.testing.assert_close(out, F.linear(x, weight, bias) + x @ (lora.scaling * lora.lora_B @ lora.lora_A).t())
