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


def build_masker(cfg, backbone) -> Masker:
    """The meta-architecture's masker: ``MODEL.MASKER.INIT_W`` / ``INIT_B``, or the trained w, b
    that the backbone brings (``backbone.masker_state``, e.g. TCL's from ``MODEL.TCL.WEIGHTS``)."""
    masker = Masker(cfg.MODEL.MASKER.INIT_W, cfg.MODEL.MASKER.INIT_B)
    if backbone.masker_state is not None:
        masker.load_state_dict(backbone.masker_state)
    return masker
