"""The patch embedding as one matrix product equals the patch convolution it replaces."""
import pytest
import torch
from torch import nn

from ttd_d2.modeling.backbone.embeddings import patch_embedding


def _reference(conv, x):
    out = conv(x)
    return out.flatten(2).transpose(1, 2), tuple(out.shape[-2:])


@pytest.mark.parametrize("size", [(32, 48), (37, 50)])  # on the grid; and rows / columns the conv drops
@pytest.mark.parametrize("bias", [False, True])
def test_patch_embedding_equals_the_convolution(size, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=bias).double()
    x = torch.randn(2, 3, *size, dtype=torch.double, requires_grad=True)
    tokens, grid = patch_embedding(conv, x)
    expected, expected_grid = _reference(conv, x)
    assert grid == expected_grid == (size[0] // 8, size[1] // 8)
    torch.testing.assert_close(tokens, expected)
    # the same gradients for the kernel and the input (the plain fine-tune trains conv1)
    weights = torch.randn_like(tokens)
    got = torch.autograd.grad((tokens * weights).sum(), [conv.weight, x])
    want = torch.autograd.grad((expected * weights).sum(), [conv.weight, x])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_patch_embedding_hand_computed_token():
    conv = nn.Conv2d(1, 2, kernel_size=2, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]]))
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    tokens, grid = patch_embedding(conv, x)
    assert grid == (2, 2)
    # token 1 is the patch at row 0, column 1: pixels 2, 3, 6, 7
    assert tokens[0, 1].tolist() == [2.0, 2 + 3 + 6 + 7]
    assert tokens[0, 2].tolist() == [8.0, 8 + 9 + 12 + 13]


def test_other_convolutions_run_as_themselves():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1)
    x = torch.randn(1, 3, 9, 9)
    tokens, grid = patch_embedding(conv, x)
    expected, expected_grid = _reference(conv, x)
    assert grid == expected_grid
    torch.testing.assert_close(tokens, expected)
