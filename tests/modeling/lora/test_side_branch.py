"""LoRA on the attention projections computed as side branches (lora/side_branch.py): the same
values and adapter gradients as the parametrized weight, and no gradient of the frozen weight."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ttd_d2.modeling.lora import add_lora_to_blocks, lora_disabled
from ttd_d2.modeling.lora.side_branch import lora_linear, self_attention


def _adapted_attention(batch_first=True, seed=0):
    torch.manual_seed(seed)
    block = nn.Module()
    block.attn = nn.MultiheadAttention(16, 2, batch_first=batch_first)
    block.mlp = nn.Module()
    block.mlp.c_fc, block.mlp.c_proj = nn.Linear(16, 32), nn.Linear(32, 16)
    for p in block.parameters():
        p.requires_grad_(False)
    add_lora_to_blocks([block], rank=4, alpha=8.0, targets=["attn.in_proj", "attn.out_proj"])
    with torch.no_grad():  # non-zero adapters
        for plist in (block.attn.parametrizations.in_proj_weight, block.attn.out_proj.parametrizations.weight):
            plist[0].lora_B.normal_(0, 0.3)
    return block.attn


def _grads(attn):
    return [p.grad.clone() for p in (attn.parametrizations.in_proj_weight[0].lora_A,
                                     attn.parametrizations.in_proj_weight[0].lora_B,
                                     attn.out_proj.parametrizations.weight[0].lora_A,
                                     attn.out_proj.parametrizations.weight[0].lora_B)]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "causal_float", "causal_bool"])
def test_self_attention_matches_the_parametrized_module(batch_first, mask):
    attn = _adapted_attention(batch_first)
    reference = copy.deepcopy(attn)
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    attn_mask = None
    if mask == "causal_float":
        attn_mask = torch.full((5, 5), float("-inf")).triu(1)
    elif mask == "causal_bool":
        attn_mask = torch.ones(5, 5, dtype=torch.bool).triu(1)  # True = masked, as nn.MultiheadAttention takes it
    ours = self_attention(attn, x, attn_mask)
    theirs = reference(x, x, x, need_weights=False, attn_mask=attn_mask)[0]  # reads W + s B A
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    for a, b in zip(_grads(attn), _grads(reference)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert attn.parametrizations.in_proj_weight.original.grad is None  # frozen, never formed


def test_lora_linear_honours_disabled_and_override():
    attn = _adapted_attention()
    x = torch.randn(4, 16)
    lora = attn.parametrizations.in_proj_weight[0]
    torch.testing.assert_close(lora_linear(attn, "in_proj_weight", x, attn.in_proj_bias),
                               x @ attn.in_proj_weight.T + attn.in_proj_bias, atol=1e-5, rtol=1e-5)
    with lora_disabled(attn):
        assert torch.equal(lora_linear(attn, "in_proj_weight", x, attn.in_proj_bias),
                           torch.nn.functional.linear(x, attn.parametrizations.in_proj_weight.original, attn.in_proj_bias))
    lora.delta_override = torch.randn(48, 16)
    try:
        expected = x @ (attn.parametrizations.in_proj_weight.original + lora.delta_override).T + attn.in_proj_bias
        torch.testing.assert_close(lora_linear(attn, "in_proj_weight", x, attn.in_proj_bias), expected, atol=1e-5, rtol=1e-5)
    finally:
        lora.delta_override = None
    plain = nn.Linear(16, 8)
    assert not parametrize.is_parametrized(plain, "weight")
    assert torch.equal(lora_linear(plain, "weight", x, plain.bias), plain(x))


def test_ttd_model_blocks_keep_batch_first_attention_after_merge(tiny_cfg):
    from conftest import build
    from ttd_d2.modeling.lora import merge_lora

    model = build(tiny_cfg, train=True, **{"MODEL.TTD.ENABLED": True})
    blocks = list(model.backbone.clip.visual.transformer.resblocks) + list(model.backbone.clip.transformer.resblocks)
    assert all("attention" in b.__dict__ for b in blocks)  # every block is adapted by default
    batch = [{"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), "caption": "a red circle and a square"}
             for _ in range(2)]
    sum(model(batch).values()).backward()
    originals = [p for n, p in model.named_parameters() if n.endswith("in_proj_weight.original")]
    assert originals and all(p.grad is None for p in originals)  # no full-size weight gradient
    merge_lora(model.backbone.clip)
    assert all("attention" in b.__dict__ for b in blocks)  # plain weights read as they are
    assert not any(parametrize.is_parametrized(b.attn) for b in blocks)


def test_clipdense_gives_unadapted_blocks_the_batch_first_attention(tiny_cfg):
    """Without TTD (no adapter anywhere) every tower block still runs self_attention."""
    from conftest import build

    model = build(tiny_cfg)
    blocks = list(model.backbone.clip.visual.transformer.resblocks) + list(model.backbone.clip.transformer.resblocks)
    assert blocks and all("attention" in b.__dict__ for b in blocks)
    assert not any(parametrize.is_parametrized(b.attn) for b in blocks)


def test_batch_first_attention_of_plain_blocks_matches_open_clip():
    """CLIPDense's attention for blocks without adapters (use_batch_first_attention) gives
    open_clip's own values, image and text tower (causal mask), up to float rounding."""
    import open_clip

    from ttd_d2.modeling.lora.side_branch import use_batch_first_attention

    torch.manual_seed(0)
    ref = open_clip.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                         text_cfg={"context_length": 16, "vocab_size": 100, "width": 32, "heads": 4, "layers": 2}).eval()
    ours = copy.deepcopy(ref)
    assert use_batch_first_attention(ours) == 4
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(tokens), ref.encode_text(tokens), atol=1e-5, rtol=1e-5)
