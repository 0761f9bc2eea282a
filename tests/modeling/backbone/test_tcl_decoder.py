"""TCL's gated decoder: the first branch of each block computed at the input resolution (four
phase convolutions, or one of stacked phase kernels) equals the branch on the upsampled map, and
the Winograd path equals the definition, values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from ttd_d2.modeling.backbone.tcl_decoder import (
    GatedDecoder, interleave_phases, nearest_upsampled_conv, phase_kernels, stacked_phase_kernel,
    upsample_add_stacked_phases,
)


def upsample(x):
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def reference_decoder(decoder, x):
    """The decoder from its definition: per block, nearest 2x upsampling, then for each branch
    x + tanh(gate) * conv(GELU(LayerNorm over channels(x)))."""
    for block in decoder.blocks:
        x = upsample(x)
        for branch in block.convs:
            y = F.layer_norm(x.movedim(1, -1), (x.shape[1],), branch.norm.weight, branch.norm.bias,
                             branch.norm.eps).movedim(-1, 1)
            x = x + torch.tanh(branch.gate) * F.conv2d(F.gelu(y), branch.conv.weight, branch.conv.bias,
                                                        padding=branch.conv.kernel_size[0] // 2)
    return x


def test_phase_kernels_of_a_3x3_kernel_by_hand():
    w = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # rows (1 2 3) (4 5 6) (7 8 9)
    kernels = phase_kernels(w)
    # even output rows read input rows (i-1, i): taps (top) and (middle + bottom); odd rows (i, i+1):
    # (top + middle) and (bottom); columns likewise
    expected = {(0, 0): [[1, 2 + 3], [4 + 7, 5 + 6 + 8 + 9]], (0, 1): [[1 + 2, 3], [4 + 5 + 7 + 8, 6 + 9]],
                (1, 0): [[1 + 4, 2 + 3 + 5 + 6], [7, 8 + 9]], (1, 1): [[1 + 2 + 4 + 5, 3 + 6], [7 + 8, 9]]}
    for (a, b), values in expected.items():
        assert kernels[a][b].shape == (1, 1, 2, 2)
        assert torch.equal(kernels[a][b][0, 0], torch.tensor(values, dtype=torch.float32))


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_nearest_upsampled_conv_equals_the_conv_of_the_upsampled_map(kernel_size):
    torch.manual_seed(kernel_size)
    x = torch.randn(2, 5, 4, 7, dtype=torch.float64)  # not square, odd width
    weight = torch.randn(3, 5, kernel_size, kernel_size, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    expected = F.conv2d(upsample(x), weight, bias, padding=kernel_size // 2)
    phases = nearest_upsampled_conv(x, weight, bias)
    assert all(p.shape == (2, 3, 4, 7) for row in phases for p in row)
    torch.testing.assert_close(interleave_phases(phases), expected, rtol=0, atol=1e-12)


def test_interleave_places_phase_a_b_at_pixel_2i_plus_a_2j_plus_b():
    phases = [[torch.full((1, 2, 3, 4), float(10 * a + b)) for b in (0, 1)] for a in (0, 1)]
    out = interleave_phases(phases)
    assert out.shape == (1, 2, 6, 8)
    for a in (0, 1):
        for b in (0, 1):
            assert torch.all(out[:, :, a::2, b::2] == 10 * a + b)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_decoder_equals_its_definition_values_and_gradients(kernel_size):
    torch.manual_seed(0)
    decoder = GatedDecoder(6, num_blocks=2, kernel_size=kernel_size).double()
    with torch.no_grad():
        for param in decoder.parameters():
            param.add_(0.1 * torch.randn_like(param))  # non-zero gates, non-trivial norms
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64, requires_grad=True)

    def output_and_grads(forward):
        out = forward(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *decoder.parameters()])
        return out.detach(), grads

    out, got = output_and_grads(decoder)
    ref, expected = output_and_grads(lambda t: reference_decoder(decoder, t))
    assert out.shape == (2, 6, 12, 20) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


def test_decoder_needs_a_branch_per_block():
    with pytest.raises(ValueError, match="num_convs"):
        GatedDecoder(4, num_convs=0)


def perturbed_decoder(**kwargs):
    torch.manual_seed(0)
    decoder = GatedDecoder(6, num_blocks=2, **kwargs).double()
    with torch.no_grad():
        for param in decoder.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return decoder


def test_stacked_phase_kernel_convolution_gives_the_four_phases():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 4, 7, dtype=torch.float64)
    weight = torch.randn(3, 5, 3, 3, dtype=torch.float64)
    stacked = F.conv2d(x, stacked_phase_kernel(weight), padding=1)  # [2, 12, 4, 7]
    phases = nearest_upsampled_conv(x, weight, None)
    for a in (0, 1):
        for b in (0, 1):
            k = 2 * a + b
            torch.testing.assert_close(stacked[:, 3 * k:3 * (k + 1)], phases[a][b], rtol=0, atol=1e-12)
    low = torch.randn(2, 3, 4, 7, dtype=torch.float64)
    expected = interleave_phases([[low + phases[a][b] for b in (0, 1)] for a in (0, 1)])
    torch.testing.assert_close(upsample_add_stacked_phases(stacked, low), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("trained", [True, False])
def test_winograd_decoder_equals_its_definition_values_and_gradients(trained):
    decoder = perturbed_decoder(conv="winograd").requires_grad_(trained)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64, requires_grad=True)
    params = list(decoder.parameters()) if trained else []

    def output_and_grads(forward):
        out = forward(x)
        return out.detach(), torch.autograd.grad(out.square().sum(), [x, *params])

    out, got = output_and_grads(decoder)
    ref, expected = output_and_grads(lambda t: reference_decoder(decoder, t))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


def test_auto_takes_winograd_on_float32_cpu_tensors_only():
    branch = GatedDecoder(4).blocks[0].convs[0]
    assert branch.uses_winograd(torch.zeros(1, 4, 2, 2))
    assert not branch.uses_winograd(torch.zeros(1, 4, 2, 2, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not branch.uses_winograd(torch.zeros(1, 4, 2, 2))
    assert not GatedDecoder(4, kernel_size=5).blocks[0].convs[0].uses_winograd(torch.zeros(1, 4, 2, 2))
    assert not GatedDecoder(4, conv="direct").blocks[0].convs[0].uses_winograd(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="DECODER_CONV 'fast' unknown"):
        GatedDecoder(4, conv="fast")
    with pytest.raises(ValueError, match="needs kernel size 3"):
        GatedDecoder(4, kernel_size=5, conv="winograd")


@pytest.mark.parametrize("conv, first_kind, rest_kind", [("winograd", "winograd_stacked", "winograd"),
                                                       ("direct", "phases", "gated")])
def test_frozen_weights_keep_their_derived_kernels_until_they_change(conv, first_kind, rest_kind):
    decoder = perturbed_decoder(conv=conv).requires_grad_(False)
    first_branch, branch = decoder.blocks[0].convs[0], decoder.blocks[0].convs[1]
    x = torch.randn(1, 6, 3, 5, dtype=torch.float64)
    first = decoder(x)
    assert set(first_branch._weights_cache) == {first_kind} and set(branch._weights_cache) == {rest_kind}
    kept_first, kept = first_branch._weights_cache[first_kind][1], branch._weights_cache[rest_kind][1]
    torch.testing.assert_close(decoder(x), first, rtol=0, atol=0)
    assert first_branch._weights_cache[first_kind][1] is kept_first  # reused
    assert branch._weights_cache[rest_kind][1] is kept
    with torch.no_grad():
        branch.gate.add_(0.5)  # an in-place update (optimiser step, checkpoint load) bumps the version
        first_branch.conv.weight.mul_(1.5)
    changed = decoder(x)
    assert branch._weights_cache[rest_kind][1] is not kept
    assert first_branch._weights_cache[first_kind][1] is not kept_first
    torch.testing.assert_close(changed, reference_decoder(decoder, x), rtol=1e-10, atol=1e-10)
    kept = dict(branch._weights_cache)
    decoder.requires_grad_(True)
    out = decoder(x)  # weights needing a gradient: their kernels are built per call and not kept
    assert out.requires_grad and branch._weights_cache == kept
    out.sum().backward()
    assert branch.gate.grad is not None and first_branch.conv.weight.grad is not None
