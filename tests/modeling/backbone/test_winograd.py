"""Winograd's F(4x4, 3x3) 3x3 convolution against F.conv2d: values, gradients, odd sizes, chunks."""
import pytest
import torch
import torch.nn.functional as F

from ttd_d2.modeling.backbone import winograd
from ttd_d2.modeling.backbone.winograd import WinogradKernel, transform_kernel, winograd_conv3x3


def test_one_dimensional_f43_is_a_correlation_by_hand():
    """A^T [(G g) * (B^T d)] equals y_i = sum_k d_{i+k} g_k for one 6-sample tile, exactly."""
    b_t, g_m, a_t = (torch.tensor(m, dtype=torch.float64) for m in (winograd._B_T, winograd._G, winograd._A_T))
    d = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.0], dtype=torch.float64)
    g = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    expected = torch.tensor([2 * 1 + 2 + 1.5, -4 - 3 + 0.25, 6 - 0.5 + 2, 1 - 4 - 0.5], dtype=torch.float64)
    torch.testing.assert_close(a_t @ ((g_m @ g) * (b_t @ d)), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 5, 7, 9), (3, 4, 1, 1), (1, 2, 5, 4)])
def test_values_and_gradients_equal_conv2d(shape):
    torch.manual_seed(sum(shape))
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    out = winograd_conv3x3(x, weight, bias)
    ref = F.conv2d(x, weight, bias, padding=1)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-11)
    probe = torch.randn_like(ref)
    got = torch.autograd.grad((out * probe).sum(), [x, weight, bias])
    expected = torch.autograd.grad((ref * probe).sum(), [x, weight, bias])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_float32_error_is_rounding_sized():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 16, 16)
    weight = torch.randn(32, 32, 3, 3) * 0.1
    ref = F.conv2d(x.double(), weight.double(), padding=1)
    err = (winograd_conv3x3(x, weight) - ref).abs().max() / ref.abs().max()
    assert err < 1e-5


def test_batches_beyond_a_chunk_give_the_same_result(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    whole = winograd_conv3x3(x, weight)
    monkeypatch.setattr(winograd, "TILES_PER_CHUNK", 8)  # two 8x8 maps (4 tiles each) per chunk
    torch.testing.assert_close(winograd_conv3x3(x, weight), whole, rtol=0, atol=0)
    torch.testing.assert_close(whole, F.conv2d(x, weight, padding=1), rtol=1e-11, atol=1e-11)


def test_output_is_channels_last_and_kernel_transforms_are_kept():
    weight = torch.randn(4, 3, 3, 3)
    kernel = WinogradKernel(weight)
    out = winograd_conv3x3(torch.randn(1, 3, 6, 6), weight, None, kernel)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert kernel.forward is kernel.forward  # computed once
    torch.testing.assert_close(kernel.forward, transform_kernel(weight))
    torch.testing.assert_close(kernel.backward, transform_kernel(weight.flip(2, 3).transpose(0, 1)))
    assert kernel.forward.shape == (36, 3, 4) and kernel.backward.shape == (36, 4, 3)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="3x3 kernel"):
        WinogradKernel(torch.randn(2, 2, 5, 5))
    with pytest.raises(ValueError, match=r"expected x \[B, 3, H, W\]"):
        winograd_conv3x3(torch.randn(1, 4, 5, 5), torch.randn(2, 3, 3, 3))
