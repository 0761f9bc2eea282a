"""3x3 convolutions (stride 1, zero padding 1) by Winograd's minimal filtering F(4x4, 3x3), for the CPU.

Why hand-written: on a CPU, PyTorch runs a float32 convolution through oneDNN's direct algorithm,
9 multiply-adds per output pixel and channel pair, already at the cores' matrix rate (the TCL
decoder's 3x3 convolutions at 192 channels: 148-178 GFLOP/s on the 2-core AVX2 development
machine, against 173 for a large matmul; benchmarks/README.md). oneDNN's own Winograd kernels
target AVX-512 only and PyTorch does not select them. F(4x4, 3x3) (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016) computes each 4x4 output tile from the
6x6 input tile around it with 36 products per channel pair instead of 144:

    Y = A^T [ (G g G^T) * (B^T d B) ] A     per tile d [6, 6] and kernel g [3, 3],

so the convolution becomes one batched matmul ``[36, tiles, C_in] @ [36, C_in, C_out]`` (4x
fewer multiply-adds) between fixed linear transforms of the input tiles and of the kernel, and
the inverse transform of its products. The transforms cost extra passes over the tiles, so the
saving on the whole convolution is smaller than 4x (measured: benchmarks/README.md). Results
equal the direct convolution's up to float rounding (the transforms' coefficients reach 8 and
1/24; about 1e-5 relative in float32; tested against ``F.conv2d``).

The input gradient of this convolution is the same convolution of the output gradient with the
kernel flipped and transposed, so it runs through F(4x4, 3x3) too; the kernel's gradient (only
when it requires one) is ``torch.nn.grad.conv2d_weight``'s.
"""
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["WinogradKernel", "winograd_conv3x3", "transform_kernel"]

# F(4x4, 3x3)'s matrices for a correlation (what conv2d computes), interpolation points 0, +-1, +-2, infinity
_B_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
TILE, WINDOW = 4, 6  # output tile side, input tile side (TILE + 3 - 1)
# Tiles per matmul: larger batches are cut into chunks of about this many tiles (a batch of 32
# maps of 64 x 64), which bounds the transformed tiles' memory (36 floats per tile and channel).
# Smaller chunks, to stay in the caches, were slower on the development CPU (benchmarks/README.md).
TILES_PER_CHUNK = 8192


@lru_cache(maxsize=None)
def _transforms(dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-D transforms as Kronecker products, one matmul each: input [36, 36] (B^T x B^T),
    kernel [36, 9] (G x G), output [16, 36] (A^T x A^T)."""
    def kron(m):
        m = torch.tensor(m, dtype=torch.float64)
        return torch.kron(m, m).to(dtype=dtype, device=device)

    return kron(_B_T), kron(_G), kron(_A_T)


def transform_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A kernel [O, I, 3, 3] -> its Winograd transform [36, I, O] (G g G^T per channel pair)."""
    out_channels, in_channels = weight.shape[:2]
    _, kernel_t, _ = _transforms(weight.dtype, weight.device)
    flat = weight.permute(2, 3, 1, 0).reshape(9, in_channels * out_channels)
    return (kernel_t @ flat).view(WINDOW * WINDOW, in_channels, out_channels)


def _conv_chunk(x: torch.Tensor, kernel: torch.Tensor, out: torch.Tensor) -> None:
    """One chunk of ``conv_nhwc``: x [b, H, W, I] -> ``out`` [b, H, W, O] (written in place)."""
    batch, height, width, in_channels = x.shape
    out_channels = kernel.shape[-1]
    rows, cols = -(-height // TILE), -(-width // TILE)
    input_t, _, output_t = _transforms(x.dtype, x.device)
    # one zero row / column around the map (the convolution's padding), more below and right to whole tiles
    padded = F.pad(x, (0, 0, 1, 1 + TILE * cols - width, 1, 1 + TILE * rows - height))
    tiles = padded.unfold(1, WINDOW, TILE).unfold(2, WINDOW, TILE)  # [b, rows, cols, I, 6, 6], a view
    n = batch * rows * cols
    tiles = tiles.permute(4, 5, 0, 1, 2, 3).reshape(WINDOW * WINDOW, n * in_channels)
    products = torch.bmm((input_t @ tiles).view(WINDOW * WINDOW, n, in_channels), kernel)  # [36, n, O]
    y = (output_t @ products.view(WINDOW * WINDOW, n * out_channels)).view(TILE, TILE, batch, rows, cols, out_channels)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(batch, TILE * rows, TILE * cols, out_channels)
    out.copy_(y[:, :height, :width])


def conv_nhwc(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The 3x3 convolution (padding 1, no bias) of x [B, H, W, I] (any strides) with a
    transformed kernel [36, I, O] (``transform_kernel``) -> [B, H, W, O], contiguous."""
    batch, height, width, _ = x.shape
    out = x.new_empty(batch, height, width, kernel.shape[-1])
    per_chunk = max(1, TILES_PER_CHUNK // (-(-height // TILE) * -(-width // TILE)))
    for start in range(0, batch, per_chunk):
        _conv_chunk(x[start:start + per_chunk], kernel, out[start:start + per_chunk])
    return out


class WinogradKernel:
    """A 3x3 kernel [O, I, 3, 3] and its transforms, each computed on first use and then kept:
    ``forward`` (``transform_kernel``) and ``backward`` (that of the flipped, transposed kernel,
    which gives the input gradient). Holds a detached reference to the kernel's values."""

    def __init__(self, weight: torch.Tensor):
        if weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3):
            raise ValueError(f"F(4x4, 3x3) needs a 3x3 kernel [O, I, 3, 3], got {tuple(weight.shape)}")
        self.weight = weight.detach()
        self._forward: Optional[torch.Tensor] = None
        self._backward: Optional[torch.Tensor] = None

    @property
    def forward(self) -> torch.Tensor:
        if self._forward is None:
            self._forward = transform_kernel(self.weight)
        return self._forward

    @property
    def backward(self) -> torch.Tensor:
        if self._backward is None:
            self._backward = transform_kernel(self.weight.flip(2, 3).transpose(0, 1))
        return self._backward


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, kernel: WinogradKernel):
        ctx.kernel = kernel
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None)
        y = conv_nhwc(x.permute(0, 2, 3, 1), kernel.forward)
        if bias is not None:
            y += bias
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_nhwc(grad.permute(0, 2, 3, 1), ctx.kernel.backward).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.nn.grad.conv2d_weight(x, ctx.kernel.weight.shape, grad, padding=1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     kernel: Optional[WinogradKernel] = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for x [B, I, H, W] and weight [O, I, 3, 3] by
    F(4x4, 3x3) -> [B, O, H, W] (channels-last), differentiable in all three. ``kernel``: the
    weight's ``WinogradKernel`` when the caller keeps one (its transforms are then reused);
    it must hold ``weight``'s current values."""
    if x.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"expected x [B, {weight.shape[1]}, H, W] for weight {tuple(weight.shape)}, got {tuple(x.shape)}")
    return _WinogradConv3x3.apply(x, weight, bias, kernel if kernel is not None else WinogradKernel(weight))
