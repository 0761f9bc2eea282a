"""ttd_d2.modeling.lora.inject: parametrized modules of one base class share one class, so the
adapted blocks of a tower share torch.compile's graphs (dynamo guards on a module's class); a
module gets a class of its own before torch edits it (merging), leaving the others adapted."""
import copy

import open_clip
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ttd_d2.modeling.compile import compile_blocks
from ttd_d2.modeling.lora import add_lora, lora_parameters, merge_lora

VISION_CFG = dict(image_size=32, patch_size=8, width=64, layers=3, head_width=32)
TEXT_CFG = dict(context_length=16, vocab_size=100, width=32, heads=2, layers=3)


def adapted_clip(seed=0):
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    add_lora(model, rank=2, alpha=4.0)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # adapters that change the outputs
        for p in lora_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_the_adapted_modules_of_both_towers_share_one_class_per_base_class():
    model = adapted_clip()
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    for modules in ([b.attn for b in blocks], [b.attn.out_proj for b in blocks]):
        classes = {type(m) for m in modules}
        assert len(classes) == 1
        (cls,) = classes
        assert parametrize.is_parametrized(modules[0]) and cls.__bases__[0] is type(modules[0]).__bases__[0]
    assert type(copy.deepcopy(model).visual.transformer.resblocks[0].attn) is type(blocks[0].attn)


def test_the_blocks_of_a_tower_share_one_compiled_graph():
    """Every block of the image tower on the same input: one graph (one per block when each
    block's attention had a class of its own)."""
    from torch._dynamo.utils import counters

    model = adapted_clip()
    blocks = model.visual.transformer.resblocks
    compile_blocks(blocks, "visual", "default", backend="eager")
    x = torch.randn(2, 17, 64)
    counters.clear()
    eager = [type(b).forward(b, x) for b in blocks]
    compiled = [b(x) for b in blocks]
    assert counters["stats"]["unique_graphs"] == 1
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)


def test_merging_one_block_leaves_the_others_adapted():
    """Merging edits the merged module's class (torch removes its properties): the modules
    still adapted, which shared that class, keep their adapted weights."""
    model, reference = adapted_clip(), adapted_clip()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.encode_image(image)
        merge_lora(model.visual.transformer.resblocks[0])
        first, second = model.visual.transformer.resblocks[:2]
        assert type(first.attn) is nn.MultiheadAttention and not parametrize.is_parametrized(first.attn)
        assert parametrize.is_parametrized(second.attn, "in_proj_weight")
        torch.testing.assert_close(second.attn.in_proj_weight,
                                   reference.visual.transformer.resblocks[1].attn.in_proj_weight)
        torch.testing.assert_close(model.encode_image(image), expected, rtol=1e-4, atol=1e-5)
        merge_lora(model)  # then all of them
        torch.testing.assert_close(model.encode_image(image), expected, rtol=1e-4, atol=1e-5)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
