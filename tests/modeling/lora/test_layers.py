"""The adapters (ttd_d2/modeling/lora/layers.py) on a tiny random open_clip CLIP (CPU): a fresh
adapter is a no-op, the adapted weights read W + s B A, dropout only in training; the fused
low-rank add (``low_rank_linear``) against the textbook product, its backward graph, bf16
autocast."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from lora_fixtures import all_close, frozen, outputs, perturb, tiny_clip
from lora_fixtures import inputs, pair  # noqa: F401  (fixtures)
from ttd_d2.modeling.lora import LoRALinear, LoRAParametrization, add_lora, iter_lora_modules, lora_disabled


def test_zero_init_is_noop(pair, inputs):
    """A fresh adapter adds exactly 0; the adapted attention runs as side branches through
    scaled_dot_product_attention (lora/side_branch.py), nn.MultiheadAttention's own kernels
    order the same sums differently, so the outputs agree to rounding."""
    ref, model, _ = pair
    assert all_close(outputs(model, inputs), outputs(ref, inputs), atol=1e-6)
    assert all_close(outputs(model, inputs), outputs(tiny_clip(), inputs))


def test_direct_attribute_access_sees_lora(pair):
    ref, model, _ = pair
    perturb(model)
    blk, rblk = model.visual.transformer.resblocks[1], ref.visual.transformer.resblocks[1]
    (_, p_in), (_, p_out) = [
        (n, m) for n, m in iter_lora_modules(model)
        if n.startswith("visual.transformer.resblocks.1.attn")
    ]
    s = p_in.scaling
    assert s == 2.0
    assert torch.allclose(blk.attn.in_proj_weight,
                          rblk.attn.in_proj_weight + s * p_in.lora_B @ p_in.lora_A)
    assert torch.allclose(blk.attn.out_proj.weight,
                          rblk.attn.out_proj.weight + s * p_out.lora_B @ p_out.lora_A)
    x = torch.randn(5, 64)
    assert not torch.allclose(blk.attn.out_proj(x), rblk.attn.out_proj(x))
    assert not torch.allclose(blk.mlp(x), rblk.mlp(x))
    # LoRALinear exposes the (unmerged) base weight/bias
    assert blk.mlp.c_fc.weight is blk.mlp.c_fc.base.weight
    assert torch.equal(blk.mlp.c_fc.bias, rblk.mlp.c_fc.bias)
    with lora_disabled(model):
        assert torch.equal(blk.attn.in_proj_weight, rblk.attn.in_proj_weight)
        assert torch.equal(blk.mlp(x), rblk.mlp(x))


def test_dropout_only_in_train_mode():
    m = frozen(tiny_clip())
    add_lora(m, rank=4, alpha=8.0, targets=["mlp.c_fc"], dropout=0.5)
    perturb(m)
    lin = m.visual.transformer.resblocks[0].mlp.c_fc
    x = torch.randn(3, 64)
    lin.eval()
    assert torch.equal(lin(x), lin(x))
    lin.train()
    assert not torch.equal(lin(x), lin(x))



def test_delta_override_branch_has_no_dropout():
    """The EMA teacher's branch x D^T takes the input as it is, in train mode too (documented:
    "with delta_override D y = base(x) + x D^T (no dropout)")."""
    lin = LoRALinear(torch.nn.Linear(6, 4), rank=2, alpha=4.0, dropout=0.5).train()
    delta = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    lin.delta_override = delta
    x = torch.randn(5, 6)
    with torch.no_grad():
        expected = F.linear(x, lin.base.weight + delta, lin.base.bias)
        torch.testing.assert_close(lin(x), expected)
        torch.testing.assert_close(lin(x), expected)

# ---------------------------------------------------------------------------------- the low-rank add
@pytest.mark.parametrize("override", [False, True])
def test_low_rank_linear_is_the_projection_plus_the_delta_product(override):
    """The fused low-rank add (addmm with the frozen projection as accumulator, scaling on B)
    equals the textbook x W^T + b + x (s B A)^T, values and gradients of x, A and B, on a
    [2, 3, in] input."""
    from ttd_d2.modeling.lora.layers import low_rank_linear

    torch.manual_seed(0)
    lora = LoRAParametrization(5, 4, rank=2, alpha=6.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    if override:
        lora.delta_override = torch.randn(5, 4)
    x = torch.randn(2, 3, 4, requires_grad=True)
    weight, bias = torch.randn(5, 4), torch.randn(5)
    delta = lora.delta_override if override else 3.0 * lora.lora_B @ lora.lora_A
    expected = F.linear(x, weight, bias) + torch.einsum("bni,oi->bno", x, delta)
    got = low_rank_linear(x, weight, bias, lora)
    assert got.shape == (2, 3, 5)
    torch.testing.assert_close(got, expected)
    grads = torch.autograd.grad(got.square().sum(), [x, lora.lora_A, lora.lora_B], allow_unused=True)
    ref = torch.autograd.grad(expected.square().sum(), [x, lora.lora_A, lora.lora_B], allow_unused=True)
    for g, r in zip(grads, ref):
        if r is None:
            assert g is None or not g.abs().any()
        else:
            torch.testing.assert_close(g, r)


def backward_node_names(out):
    """Names of every node of ``out``'s backward graph."""
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("kind", ["linear", "side_branch"])
def test_the_in_place_add_leaves_no_full_gradient_copy_in_the_backward(kind):
    """An in-place add into a view of the projection (F.linear's output for a 3-D input) makes
    autograd copy the whole gradient (CopySlices) in the backward: one per adapted layer."""
    from ttd_d2.modeling.lora.layers import LoRALinear
    from ttd_d2.modeling.lora.side_branch import lora_linear

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, requires_grad=True)
    if kind == "linear":
        out = LoRALinear(torch.nn.Linear(4, 5), rank=2, alpha=2.0)(x)
    else:
        module = torch.nn.Linear(4, 5)
        parametrize.register_parametrization(module, "weight", LoRAParametrization(5, 4, rank=2, alpha=2.0))
        out = lora_linear(module, "weight", x, module.bias)
    names = backward_node_names(out)
    assert "AddmmBackward0" in names
    assert not {"CopySlices", "AsStridedBackward0"} & set(names), names


def test_add_low_rank_under_bf16_autocast_matches_the_unfused_branch():
    """Under CPU bf16 autocast (the training step's setting on a GPU) the in-place add casts its
    factors itself: the same values as the textbook branch, within bf16 rounding."""
    from ttd_d2.modeling.lora.layers import LoRALinear

    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 8), rank=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
        expected = layer.base(x) + 2.0 * F.linear(F.linear(x, layer.lora_A), layer.lora_B)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), atol=0.05, rtol=0.02)
