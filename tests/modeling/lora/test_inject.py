"""Adding and merging adapters (ttd_d2/modeling/lora/inject.py) on a tiny random open_clip CLIP
(CPU): the adapted weights and the trainable parameters, towers and targets, blocks outside the
towers, merging, plain checkpoints through the key-renaming hooks, argument checks."""
import copy

import open_clip
import pytest
import torch
from torch.nn.utils import parametrize

from lora_fixtures import N_ADAPTED, TEXT_CFG, VISION_CFG, all_close, all_equal, frozen, outputs, perturb, tiny_clip
from lora_fixtures import inputs, pair  # noqa: F401  (fixtures)
from ttd_d2.modeling.lora import (
    VALID_TARGETS,
    LoRALinear,
    LoRAParametrization,
    add_lora,
    add_lora_to_blocks,
    iter_lora_modules,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)


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


def test_only_lora_gets_gradients(pair, inputs):
    _, model, _ = pair
    perturb(model)  # non-zero B so that A receives a non-zero gradient too
    model.train()
    img, txt = outputs(model, inputs, grad=True)
    (img.sum() + txt.square().sum()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_merge_equals_unmerged(pair, inputs):
    ref, model, names = pair
    perturb(model)
    adapted = outputs(model, inputs)
    merged_names = merge_lora(model)
    assert sorted(merged_names) == sorted(names)
    assert all_close(outputs(model, inputs), adapted)
    assert not any(isinstance(m, (LoRALinear, LoRAParametrization)) for m in model.modules())
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert lora_state_dict(model) == {}
    assert type(model.visual.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    assert sorted(model.state_dict()) == sorted(ref.state_dict())  # plain names (order may differ)
    # a merged model loads into / from a plain open_clip model
    plain = tiny_clip(seed=5)
    plain.load_state_dict(model.state_dict())
    assert all_close(outputs(plain, inputs), adapted)


def test_plain_checkpoint_loads_into_lora_model(pair, inputs):
    ref, model, _ = pair
    other = frozen(tiny_clip(seed=7))
    res = model.load_state_dict(other.state_dict(), strict=False)
    assert res.unexpected_keys == []
    assert res.missing_keys and all(".lora_" in k for k in res.missing_keys)
    with lora_disabled(model):
        assert all_equal(outputs(model, inputs), outputs(other, inputs))


def test_subset_targets_and_towers(inputs):
    ref = frozen(tiny_clip())
    model = copy.deepcopy(ref)
    names = add_lora(model, rank=2, alpha=2.0, targets=["attn.in_proj", "mlp.c_proj"],
                     towers=["image"])
    assert len(names) == 2 * 2
    assert all(n.startswith("visual.") for n in names)
    perturb(model)
    img, txt = outputs(model, inputs)
    rimg, rtxt = outputs(ref, inputs)
    assert torch.equal(txt, rtxt) and not torch.allclose(img, rimg)
    # a second call may adapt the other tower; earlier adapters stay trainable
    more = add_lora(model, rank=2, alpha=2.0, towers=["text"])
    assert len(more) == 2 * 4
    assert {id(p) for p in model.parameters() if p.requires_grad} == {
        id(p) for p in lora_parameters(model)}
    assert len(list(lora_parameters(model))) == 2 * (4 + 8)


def test_add_lora_to_blocks_outside_towers(inputs):
    model = tiny_clip()
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


def test_deepcopy_and_double_add(pair, inputs):
    _, model, _ = pair
    perturb(model)
    clone = copy.deepcopy(model)
    assert all_equal(outputs(clone, inputs), outputs(model, inputs))
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
    model = tiny_clip()
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
