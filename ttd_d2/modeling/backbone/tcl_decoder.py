"""TCL's gated upsampling decoder: residual conv blocks, each doubling the resolution, whose
convolutions are scaled by tanh(gate) with the gates starting at 0.

At initialisation every residual branch is multiplied by tanh(0) = 0, so the decoder is
exactly a nearest-neighbour upsampling by 2 ** num_blocks: each input position becomes a
square of identical values. TCL puts the decoder between its copied last block and the copies
of ``ln_post`` and ``proj``; both act per position, so at initialisation TCL's dense map is the
MaskCLIP map of the same weights upsampled by nearest neighbour (``tcl.py``).

Each block's first branch reads the upsampled map, on which LayerNorm and GELU (per position)
commute with the upsampling, and a convolution of a 2x nearest-upsampled map equals four smaller
convolutions of the map itself, one per output phase (``nearest_upsampled_conv``): that branch
runs at the input resolution, (k//2 + 1)^2 / k^2 of the multiply-adds (4/9 for k = 3), with the
same result up to float rounding. The decoder is channels-last throughout (its LayerNorms read
channels as the last dimension without a copy).

On float32 CPU tensors (``conv="auto"``, ``MODEL.TCL.DECODER_CONV``) the 3x3 convolutions run by
Winograd's F(4x4, 3x3) (``winograd.py``; oneDNN has no such path there), a first branch's four
phase kernels as one convolution with 4x the output channels (``stacked_phase_kernel``). While
the decoder's weights need no gradient (inference, the frozen teacher and student of TTD) each
branch keeps its transformed kernel until a weight changes.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..compile import is_compiling
from .winograd import WinogradKernel, winograd_conv3x3

# MODEL.TCL.DECODER_CONV: Winograd on float32 CPU tensors outside autocast (auto), always, or never (direct)
CONV_ALGORITHMS = ("auto", "winograd", "direct")


def _fold_taps(weight: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """Sum the taps of ``weight``'s kernel dimension ``dim`` (size k) that read the same input
    row (or column) for output phase ``phase``: k -> k//2 + 1 taps. Tap t (offset t - k//2 on the
    upsampled map) reads input offset floor((phase + t - k//2) / 2); such taps are contiguous."""
    k = weight.shape[dim]
    groups = {}
    for t in range(k):
        groups.setdefault((phase + t - k // 2) // 2, []).append(t)
    return torch.stack([weight.narrow(dim, taps[0], len(taps)).sum(dim) for _, taps in sorted(groups.items())], dim)


def phase_kernels(weight: torch.Tensor) -> List[List[torch.Tensor]]:
    """The kernel [O, I, k, k] (k odd, stride 1, zero padding k//2) of a convolution applied to a
    2x nearest-upsampled map, as its four phase kernels ``[a][b]`` [O, I, k//2 + 1, k//2 + 1]:
    output pixel (2i + a, 2j + b) is the phase-(a, b) kernel on the input map at rows
    i + floor((a - k//2) / 2).., columns likewise (``nearest_upsampled_conv``). A few slice sums
    (not an einsum, whose copies cost ~10 ms per call on a CPU at 192 channels)."""
    rows = [_fold_taps(weight, 2, a) for a in (0, 1)]
    return [[_fold_taps(rows[a], 3, b) for b in (0, 1)] for a in (0, 1)]


def nearest_upsampled_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           kernels: Optional[List[List[torch.Tensor]]] = None) -> List[List[torch.Tensor]]:
    """``conv2d(upsample_nearest_2x(x), weight, bias, padding=k//2)`` for x [B, I, h, w], as its
    four output phases ``[a][b]`` [B, O, h, w] (phase (a, b) holds output pixels (2i + a, 2j + b);
    ``interleave_phases`` assembles them), computed on ``x`` itself. ``kernels``: ``weight``'s
    ``phase_kernels`` when the caller has them already."""
    k = weight.shape[-1]
    p = k // 2
    h, w = x.shape[-2:]
    pad = -((-p) // 2)  # ceil(p / 2): the rows above the map phase 0 reads, and below it phase 1
    padded = F.pad(x, (pad, pad, pad, pad))
    kernels = phase_kernels(weight) if kernels is None else kernels
    starts = [pad + (a - p) // 2 for a in (0, 1)]
    return [[F.conv2d(padded[:, :, starts[a]:starts[a] + h + p, starts[b]:starts[b] + w + p], kernels[a][b], bias)
             for b in (0, 1)] for a in (0, 1)]


def stacked_phase_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The four phase kernels of a 3x3 ``weight`` [O, I, 3, 3] (``phase_kernels``), each placed in
    a 3x3 kernel of the input rows and columns -1, 0, +1 it reads (phase 0: -1, 0; phase 1: 0, +1)
    and stacked as [4O, I, 3, 3], output channel (2a + b) * O + o: one convolution of the map
    (padding 1) gives all four phases."""
    if tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"stacked_phase_kernel needs a 3x3 kernel, got {tuple(weight.shape)}")
    kernels = phase_kernels(weight)
    place = {0: (0, 1), 1: (1, 0)}  # zero column / row after (phase 0) or before (phase 1) its 2 taps
    return torch.cat([F.pad(kernels[a][b], (*place[b], *place[a])) for a in (0, 1) for b in (0, 1)])


def upsample_add_stacked_phases(stacked: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``up(x)`` + the phases ``stacked`` [B, 4C, h, w] (channel (2a + b) * C + c, channels-last:
    ``stacked_phase_kernel``'s order) -> [B, C, 2h, 2w] channels-last, in one pass."""
    b, c, h, w = x.shape
    phases = stacked.permute(0, 2, 3, 1).view(b, h, w, 2, 2, c)
    low = x.permute(0, 2, 3, 1)[:, :, :, None, None, :]
    if torch.is_grad_enabled() and (stacked.requires_grad or x.requires_grad):  # out= has no autograd
        out = (phases + low).permute(0, 1, 3, 2, 4, 5)
    else:
        out = x.new_empty(b, h, 2, w, 2, c)
        torch.add(phases, low, out=out.permute(0, 1, 3, 2, 4, 5))
    return out.reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def interleave_phases(phases: List[List[torch.Tensor]]) -> torch.Tensor:
    """Four phase maps ``[a][b]`` [B, C, h, w] -> [B, C, 2h, 2w] (channels-last) with pixel
    (2i + a, 2j + b) from phase (a, b)'s pixel (i, j)."""
    b, c, h, w = phases[0][0].shape
    nhwc = torch.stack([phases[a][col].permute(0, 2, 3, 1) for a in (0, 1) for col in (0, 1)], dim=3)
    nhwc = nhwc.view(b, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c)
    return nhwc.permute(0, 3, 1, 2)


class GatedConv(nn.Module):
    """Pre-activation conv branch: tanh(gate) * conv(GELU(LayerNorm_C(x))), [B, C, H, W] -> same.

    The LayerNorm normalises over channels at every position; the convolution keeps the size
    (kernel ``k``, zero padding k // 2). ``gate`` is a learnable scalar initialised to 0; it
    scales the convolution's weight and bias (the same product, without a pass over the map).
    ``conv``: how a 3x3 convolution runs (``CONV_ALGORITHMS``; module docstring).
    """

    def __init__(self, channels: int, kernel_size: int = 3, conv: str = "auto"):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"GatedConv needs an odd kernel size to keep the map size, got {kernel_size}")
        if conv not in CONV_ALGORITHMS:
            raise ValueError(f"MODEL.TCL.DECODER_CONV '{conv}' unknown; use one of {CONV_ALGORITHMS}")
        if conv == "winograd" and kernel_size != 3:
            raise ValueError(f"MODEL.TCL.DECODER_CONV 'winograd' needs kernel size 3, got {kernel_size}; use auto or direct")
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Parameter(torch.zeros(()))
        self.conv_algorithm = conv
        self._weights_cache: Dict[str, Tuple] = {}  # kind -> (key, weights) while the weights need no gradient

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(LayerNorm_C(x)) [B, C, H, W], channels-last."""
        return F.gelu(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)

    def gated_weights(self):
        gate = torch.tanh(self.gate)
        return gate * self.conv.weight, gate * self.conv.bias

    def uses_winograd(self, x: torch.Tensor) -> bool:
        """Whether the convolution of ``x`` runs by F(4x4, 3x3) (``conv_algorithm``; "auto": a
        3x3 kernel on a float32 CPU tensor outside CPU autocast, where oneDNN's bf16 is faster)."""
        if self.conv_algorithm != "auto":
            return self.conv_algorithm == "winograd"
        return (self.conv.kernel_size == (3, 3) and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu"))

    def _weights_kept(self, kind: str, build: Callable[[], Tuple]) -> Tuple:
        """``build()``, the convolution's weights in the form ``kind`` needs (gated, phase
        kernels, Winograd transforms). While no weight needs a gradient (evaluation, the frozen
        teacher, a TTD student whose decoder is frozen) the result is kept, keyed by the
        weights' storage and version counters (every in-place update, optimiser step or
        checkpoint load bumps them), and reused: rebuilding the phase kernels' slice sums cost a
        CPU evaluation of one 128 px image about 7 of its 67 ms (tools/quickstart.py's model)."""
        params = (self.conv.weight, self.conv.bias, self.gate)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return build()
        if is_compiling():
            # traced into a compiled region (TCL's dense tower): built inside the graph, which
            # follows the weights by itself; a storage-pointer key breaks dynamo's graph
            return build()
        key = tuple((p.device, p.dtype, p.data_ptr(), p._version) for p in params)
        kept = self._weights_cache.get(kind)
        if kept is None or kept[0] != key:
            kept = self._weights_cache[kind] = (key, build())
        return kept[1]

    def winograd_weights(self, stacked: bool) -> Tuple[torch.Tensor, torch.Tensor, WinogradKernel]:
        """The gated kernel (``stacked_phase_kernel``'s when ``stacked``), the gated bias (repeated
        per phase when ``stacked``) and the kernel's ``WinogradKernel`` (``_weights_kept``)."""
        def build():
            weight, bias = self.gated_weights()
            if stacked:
                weight, bias = stacked_phase_kernel(weight), bias.repeat(4)
            return weight, bias, WinogradKernel(weight)
        return self._weights_kept("winograd_stacked" if stacked else "winograd", build)

    def phase_weights(self) -> Tuple[torch.Tensor, torch.Tensor, List[List[torch.Tensor]]]:
        """The gated kernel, the gated bias and the kernel's ``phase_kernels`` (``_weights_kept``)."""
        def build():
            weight, bias = self.gated_weights()
            return weight, bias, phase_kernels(weight)
        return self._weights_kept("phases", build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activations(x)
        if self.uses_winograd(x):
            return winograd_conv3x3(x, *self.winograd_weights(stacked=False))
        weight, bias = self._weights_kept("gated", self.gated_weights)
        return F.conv2d(x, weight, bias, padding=self.conv.padding)

    def residual_after_upsample(self, x: torch.Tensor) -> torch.Tensor:
        """``up(x) + self(up(x))`` for x [B, C, h, w] and up the 2x nearest upsampling ->
        [B, C, 2h, 2w], computed at x's resolution (module docstring)."""
        activations = self.activations(x)
        if self.uses_winograd(activations):
            stacked = winograd_conv3x3(activations, *self.winograd_weights(stacked=True))
            return upsample_add_stacked_phases(stacked, x)
        phases = nearest_upsampled_conv(activations, *self.phase_weights())
        return interleave_phases([[x + phase for phase in row] for row in phases])


class UpsampleBlock(nn.Module):
    """Nearest 2x upsampling, then ``len(convs)`` residual gated branches: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int, kernel_size: int = 3, num_convs: int = 2, conv: str = "auto"):
        super().__init__()
        self.convs = nn.ModuleList(GatedConv(channels, kernel_size, conv) for _ in range(num_convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, *rest = self.convs
        x = first.residual_after_upsample(x)  # up(x) + first(up(x))
        for conv in rest:
            x = x + conv(x)
        return x


class GatedDecoder(nn.Module):
    """``num_blocks`` upsampling blocks: [B, C, h, w] -> [B, C, h * 2^n, w * 2^n].

    TCL's configuration (ViT-B/16): 2 blocks of 2 branches each, kernel 3, C = the ViT width.
    ``conv``: how the 3x3 convolutions run (``CONV_ALGORITHMS``, ``MODEL.TCL.DECODER_CONV``).
    """

    def __init__(self, channels: int, num_blocks: int = 2, kernel_size: int = 3, num_convs: int = 2,
                 conv: str = "auto"):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"an upsampling block needs at least one gated branch, got num_convs={num_convs}")
        self.blocks = nn.ModuleList(UpsampleBlock(channels, kernel_size, num_convs, conv) for _ in range(num_blocks))

    @property
    def scale(self) -> int:
        """How many times larger the output is than the input, per side."""
        return 2 ** len(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
