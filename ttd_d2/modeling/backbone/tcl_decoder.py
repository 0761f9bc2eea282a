"""TCL's gated upsampling decoder: residual conv blocks, each doubling the resolution, whose
convolutions are scaled by tanh(gate) with the gates starting at 0.

At initialisation every residual branch is multiplied by tanh(0) = 0, so the decoder is
exactly a nearest-neighbour upsampling by 2 ** num_blocks: each input position becomes a
square of identical values. TCL puts the decoder between its copied last block and the copies
of ``ln_post`` and ``proj``; both act per position, so at initialisation TCL's dense map is the
MaskCLIP map of the same weights upsampled by nearest neighbour (``tcl.py``).
"""
import torch
import torch.nn.functional as F
from torch import nn


class GatedConv(nn.Module):
    """Pre-activation conv branch: tanh(gate) * conv(GELU(LayerNorm_C(x))), [B, C, H, W] -> same.

    The LayerNorm normalises over channels at every position; the convolution keeps the size
    (kernel ``k``, zero padding k // 2). ``gate`` is a learnable scalar initialised to 0.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"GatedConv needs an odd kernel size to keep the map size, got {kernel_size}")
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return torch.tanh(self.gate) * self.conv(F.gelu(y))


class UpsampleBlock(nn.Module):
    """Nearest 2x upsampling, then ``len(convs)`` residual gated branches: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int, kernel_size: int = 3, num_convs: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(GatedConv(channels, kernel_size) for _ in range(num_convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        for conv in self.convs:
            x = x + conv(x)
        return x


class GatedDecoder(nn.Module):
    """``num_blocks`` upsampling blocks: [B, C, h, w] -> [B, C, h * 2^n, w * 2^n].

    TCL's configuration (ViT-B/16): 2 blocks of 2 branches each, kernel 3, C = the ViT width.
    """

    def __init__(self, channels: int, num_blocks: int = 2, kernel_size: int = 3, num_convs: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(UpsampleBlock(channels, kernel_size, num_convs) for _ in range(num_blocks))

    @property
    def scale(self) -> int:
        """How many times larger the output is than the input, per side."""
        return 2 ** len(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
