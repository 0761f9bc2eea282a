"""Tests for ttd_d2.modeling.lora on a tiny randomly initialised open_clip CLIP (CPU)."""

import copy
import io

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ttd_d2.modeling.lora.side_branch import use_batch_first_attention

from ttd_d2.modeling.lora import (
    VALID_TARGETS,
    LoRALinear,
    LoRAParametrization,
    add_lora,
    add_lora_to_blocks,
    iter_lora_modules,
    load_lora_state_dict,
    lora_delta_override,
    lora_deltas,
    lora_disabled,
    lora_ema_update,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)

VISION_CFG = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32)
TEXT_CFG = dict(context_length=16, vocab_size=100, width=32, heads=2, layers=2)
N_ADAPTED = 2 * 2 * 4  # towers * layers * targets


def _tiny_clip(seed=0):
    """A tiny open_clip CLIP with the batch-first attention CLIPDense gives every block, so that
    "adapters off" can be compared bit for bit with the base model as ttd_d2 runs it."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG).eval()
    use_batch_first_attention(model)
    return model


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(123)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 100, (2, 16), generator=g)


def _outputs(model, inputs, grad=False):
    img, txt = inputs
    with torch.set_grad_enabled(grad):
        return model.encode_image(img), model.encode_text(txt)


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _close(a, b, atol=1e-5):
    return all(torch.allclose(x, y, atol=atol, rtol=1e-4) for x, y in zip(a, b))


def _perturb(model, seed=1, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture
def pair():
    """(reference base model with frozen params, same model with rank-4 LoRA)."""
    ref = _frozen(_tiny_clip())
    model = copy.deepcopy(ref)
    names = add_lora(model, rank=4, alpha=8.0)
    return ref, model, names


def test_names_and_trainable_params(pair):
    ref, model, names = pair
    assert len(names) == N_ADAPTED
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in names
    assert "visual.transformer.resblocks.1.attn.out_proj.weight" in names
    assert "transformer.resblocks.1.mlp.c_fc.weight" in names
    assert "transformer.resblocks.0.mlp.c_proj.weight" in names
    assert [n for n, _ in iter_lora_modules(model)] == names
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora_parameters(model)}
    assert len(trainable) == 2 * N_ADAPTED
    # adapter kinds: parametrization for attention weights, side branch for the MLP
    blk = model.visual.transformer.resblocks[0]
    assert parametrize.is_parametrized(blk.attn, "in_proj_weight")
    assert parametrize.is_parametrized(blk.attn.out_proj, "weight")
    assert isinstance(blk.mlp.c_fc, LoRALinear) and isinstance(blk.mlp.c_proj, LoRALinear)
    assert blk.get_weight_dtype() == torch.float32  # reads mlp.c_fc.weight


def test_zero_init_is_noop(pair, inputs):
    """A fresh adapter adds exactly 0; the adapted attention runs as side branches through
    scaled_dot_product_attention (lora/side_branch.py), nn.MultiheadAttention's own kernels
    order the same sums differently, so the outputs agree to rounding."""
    ref, model, _ = pair
    assert _close(_outputs(model, inputs), _outputs(ref, inputs), atol=1e-6)
    assert _close(_outputs(model, inputs), _outputs(_tiny_clip(), inputs))


def test_perturbed_changes_and_disabled_restores(pair, inputs):
    ref, model, _ = pair
    base = _outputs(ref, inputs)
    _perturb(model)
    adapted = _outputs(model, inputs)
    for a, b in zip(adapted, base):
        assert (a - b).abs().max() > 1e-3
    with lora_disabled(model):
        assert _equal(_outputs(model, inputs), base)
        assert _equal(_outputs(model, inputs, grad=True), _outputs(ref, inputs, grad=True))
        with lora_disabled(model):  # nested
            pass
        assert all(not m.enabled for _, m in iter_lora_modules(model))
    assert _equal(_outputs(model, inputs), adapted)
    with pytest.raises(RuntimeError, match="boom"):
        with lora_disabled(model):
            raise RuntimeError("boom")
    assert all(m.enabled for _, m in iter_lora_modules(model))
    assert _equal(_outputs(model, inputs), adapted)


def test_direct_attribute_access_sees_lora(pair):
    ref, model, _ = pair
    _perturb(model)
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


def test_only_lora_gets_gradients(pair, inputs):
    _, model, _ = pair
    _perturb(model)  # non-zero B so that A receives a non-zero gradient too
    model.train()
    img, txt = _outputs(model, inputs, grad=True)
    (img.sum() + txt.square().sum()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_merge_equals_unmerged(pair, inputs):
    ref, model, names = pair
    _perturb(model)
    adapted = _outputs(model, inputs)
    merged_names = merge_lora(model)
    assert sorted(merged_names) == sorted(names)
    assert _close(_outputs(model, inputs), adapted)
    assert not any(isinstance(m, (LoRALinear, LoRAParametrization)) for m in model.modules())
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert lora_state_dict(model) == {}
    assert type(model.visual.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    assert sorted(model.state_dict()) == sorted(ref.state_dict())  # plain names (order may differ)
    # a merged model loads into / from a plain open_clip model
    plain = _tiny_clip(seed=5)
    plain.load_state_dict(model.state_dict())
    assert _close(_outputs(plain, inputs), adapted)


def test_state_dict_roundtrip(pair, inputs):
    ref, model, _ = pair
    _perturb(model)
    sd = lora_state_dict(model)
    assert len(sd) == 2 * N_ADAPTED
    assert sd["visual.transformer.resblocks.0.attn.in_proj_weight.lora_A"].shape == (4, 64)
    assert sd["visual.transformer.resblocks.0.attn.in_proj_weight.lora_B"].shape == (192, 4)
    assert sd["transformer.resblocks.0.mlp.c_fc.weight.lora_B"].shape == (128, 4)
    assert all(not t.requires_grad for t in sd.values())
    fresh = copy.deepcopy(ref)
    add_lora(fresh, rank=4, alpha=8.0)
    assert not _equal(_outputs(fresh, inputs), _outputs(model, inputs))
    res = load_lora_state_dict(fresh, sd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert _equal(_outputs(fresh, inputs), _outputs(model, inputs))


def test_torch_save_roundtrip(pair, inputs, tmp_path):
    ref, model, _ = pair
    _perturb(model)
    path = tmp_path / "lora.pt"
    torch.save(lora_state_dict(model), path)
    loaded = torch.load(path, weights_only=True)
    fresh = copy.deepcopy(ref)
    add_lora(fresh, rank=4, alpha=8.0)
    load_lora_state_dict(fresh, loaded)
    assert _equal(_outputs(fresh, inputs), _outputs(model, inputs))
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    assert path.stat().st_size < 0.25 * buf.getbuffer().nbytes


def test_plain_checkpoint_loads_into_lora_model(pair, inputs):
    ref, model, _ = pair
    other = _frozen(_tiny_clip(seed=7))
    res = model.load_state_dict(other.state_dict(), strict=False)
    assert res.unexpected_keys == []
    assert res.missing_keys and all(".lora_" in k for k in res.missing_keys)
    with lora_disabled(model):
        assert _equal(_outputs(model, inputs), _outputs(other, inputs))


def test_strict_load_errors(pair):
    _, model, _ = pair
    sd = lora_state_dict(model)
    missing = dict(sd)
    key = next(iter(missing))
    del missing[key]
    with pytest.raises(KeyError, match="missing"):
        load_lora_state_dict(model, missing)
    extra = dict(sd, **{"foo.lora_A": torch.zeros(1)})
    with pytest.raises(KeyError, match="unexpected"):
        load_lora_state_dict(model, extra)
    res = load_lora_state_dict(model, {**missing, "foo.lora_A": torch.zeros(1)}, strict=False)
    assert res.missing_keys == [key] and res.unexpected_keys == ["foo.lora_A"]
    other = _frozen(_tiny_clip())
    add_lora(other, rank=2, alpha=8.0)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        load_lora_state_dict(model, lora_state_dict(other))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        load_lora_state_dict(model, lora_state_dict(other), strict=False)


def _two_adapters():
    """A LoRALinear and a parametrized Linear (3 -> 2), rank 1, alpha 2 (scaling 2)."""
    model = torch.nn.Module()
    model.lin = LoRALinear(torch.nn.Linear(3, 2), rank=1, alpha=2.0)
    model.par = torch.nn.Linear(3, 2)
    parametrize.register_parametrization(model.par, "weight", LoRAParametrization(2, 3, rank=1, alpha=2.0))
    return _frozen(model)


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
    _perturb(model)
    deltas = lora_deltas(model)
    assert list(deltas) == names and all(not d.requires_grad for d in deltas.values())
    adapted = _outputs(model, inputs)
    with lora_delta_override(model, deltas):  # W + (s B A) given as tensors = the live model
        assert _close(_outputs(model, inputs), adapted)


def test_subset_targets_and_towers(inputs):
    ref = _frozen(_tiny_clip())
    model = copy.deepcopy(ref)
    names = add_lora(model, rank=2, alpha=2.0, targets=["attn.in_proj", "mlp.c_proj"],
                     towers=["image"])
    assert len(names) == 2 * 2
    assert all(n.startswith("visual.") for n in names)
    _perturb(model)
    img, txt = _outputs(model, inputs)
    rimg, rtxt = _outputs(ref, inputs)
    assert torch.equal(txt, rtxt) and not torch.allclose(img, rimg)
    # a second call may adapt the other tower; earlier adapters stay trainable
    more = add_lora(model, rank=2, alpha=2.0, towers=["text"])
    assert len(more) == 2 * 4
    assert {id(p) for p in model.parameters() if p.requires_grad} == {
        id(p) for p in lora_parameters(model)}
    assert len(list(lora_parameters(model))) == 2 * (4 + 8)


def test_add_lora_to_blocks_outside_towers(inputs):
    model = _tiny_clip()
    last = copy.deepcopy(model.visual.transformer.resblocks[-1])
    names = add_lora_to_blocks([last], rank=2, alpha=4.0, prefix="head.")
    assert names == ["head.0." + t.replace("attn.in_proj", "attn.in_proj_weight")
                     + ("" if t == "attn.in_proj" else ".weight") for t in VALID_TARGETS]
    x = torch.randn(2, 5, 64)
    ref = model.visual.transformer.resblocks[-1]
    assert torch.allclose(last(x), ref(x), atol=1e-6)


def test_custom_text_clip_layout():
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(embed_dim=32, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG)
    names = add_lora(model, rank=2, alpha=2.0, towers=["text"])
    assert names and all(n.startswith("text.transformer.resblocks.") for n in names)


def test_dropout_only_in_train_mode():
    m = _frozen(_tiny_clip())
    add_lora(m, rank=4, alpha=8.0, targets=["mlp.c_fc"], dropout=0.5)
    _perturb(m)
    lin = m.visual.transformer.resblocks[0].mlp.c_fc
    x = torch.randn(3, 64)
    lin.eval()
    assert torch.equal(lin(x), lin(x))
    lin.train()
    assert not torch.equal(lin(x), lin(x))


def test_deepcopy_and_double_add(pair, inputs):
    _, model, _ = pair
    _perturb(model)
    clone = copy.deepcopy(model)
    assert _equal(_outputs(clone, inputs), _outputs(model, inputs))
    with pytest.raises(ValueError, match="already"):
        add_lora(model, rank=4, alpha=8.0)
    with pytest.raises(ValueError, match="already"):
        add_lora(model, rank=4, alpha=8.0, targets=["mlp.c_fc"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(targets=["attn.qkv"]), "valid"),
        (dict(targets=[]), "valid"),
        (dict(targets="mlp.c_fc"), "not a string"),
        (dict(towers=["audio"]), "valid"),
        (dict(rank=0), "rank"),
        (dict(rank=-2), "rank"),
        (dict(rank=2.5), "rank"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_invalid_args(kwargs, match):
    model = _tiny_clip()
    args = dict(rank=4, alpha=8.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        add_lora(model, **args)
    # nothing was modified or frozen
    assert not list(iter_lora_modules(model))
    assert all(p.requires_grad for p in model.parameters())


def test_missing_tower_raises():
    with pytest.raises(ValueError, match="tower"):
        add_lora(torch.nn.Linear(3, 3), rank=2, alpha=2.0, towers=["image"])


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
