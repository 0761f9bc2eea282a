"""The masker of TCL, shared by every backbone: M = sigmoid(w * cos + b)."""
import torch
from torch import nn

from .ttd.losses import masker


class Masker(nn.Module):
    """Turns cosine maps [..., h, w] into mask probabilities with two learnable scalars."""

    def __init__(self, init_w: float = 10.0, init_b: float = -2.5):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def forward(self, cos: torch.Tensor) -> torch.Tensor:
        return masker(cos, self.w, self.b)
