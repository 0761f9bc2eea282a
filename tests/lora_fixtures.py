"""Helpers of the LoRA tests (tests/modeling/lora/): a tiny random open_clip CLIP run as ttd_d2
runs it, its outputs and comparisons, random adapters, and the fixtures ``inputs`` and ``pair``
(a test module imports the fixtures it uses)."""
import copy

import open_clip
import pytest
import torch

from ttd_d2.modeling.lora import add_lora, lora_parameters
from ttd_d2.modeling.lora.side_branch import use_batch_first_attention


VISION_CFG = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32)
TEXT_CFG = dict(context_length=16, vocab_size=100, width=32, heads=2, layers=2)
N_ADAPTED = 2 * 2 * 4  # towers * layers * targets


def tiny_clip(seed=0):
    """A tiny open_clip CLIP with the batch-first attention CLIPDense gives every block, so that
    "adapters off" can be compared bit for bit with the base model as ttd_d2 runs it."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG).eval()
    use_batch_first_attention(model)
    return model


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(123)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 100, (2, 16), generator=g)


def outputs(model, inputs, grad=False):
    img, txt = inputs
    with torch.set_grad_enabled(grad):
        return model.encode_image(img), model.encode_text(txt)


def all_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def all_close(a, b, atol=1e-5):
    return all(torch.allclose(x, y, atol=atol, rtol=1e-4) for x, y in zip(a, b))


def perturb(model, seed=1, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture
def pair():
    """(reference base model with frozen params, same model with rank-4 LoRA)."""
    ref = frozen(tiny_clip())
    model = copy.deepcopy(ref)
    names = add_lora(model, rank=4, alpha=8.0)
    return ref, model, names
