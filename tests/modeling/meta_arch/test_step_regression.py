"""Issue "performance": the speed work (syncs removed, loader-side tokens and tags, side-branch
and fused LoRA, one text pass, deferred metrics, ...) changes no loss and no gradient. The
values below were computed at commit 7dcd33c, the last before that work, by this file's
``step_values`` (run in a checkout of 7dcd33c, whose tests/conftest.py has the same tiny model);
the current code must reproduce them on CPU in fp32. Re-record them only for an intended change
of the method or of the tiny test model, and say so in the commit. The TCL variant (decoder
gates 0.5, the decoder trained: its phase convolutions, 568abeb, and the cosine maps divided after
the product) was recorded the same way at 5b27265, the commit before those two changes."""
import pytest
import torch

from conftest import build

RECORDED_AT_7DCD33C = {
    "default": {"loss_distill": 0.27830857038497925, "loss_tag": 0.14015421271324158, "grad_sq": 0.23404793384129252},
    "image_layers1": {"loss_distill": 0.2867387533187866, "loss_tag": 0.14860650897026062, "grad_sq": 0.2980081312627352},
}
RECORDED_AT_5B27265 = {
    "tcl": {"loss_distill": 0.17318086326122284, "loss_tag": 0.11271423101425171, "grad_sq": 0.4557357838279746},
}
VARIANTS = {"default": {}, "image_layers1": {"MODEL.TTD.LORA.IMAGE_LAYERS": 1},
            "tcl": {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TCL.TRAIN_DECODER": True, "MODEL.TTD.LORA.IMAGE_LAYERS": 1}}
RECORDED = {**RECORDED_AT_7DCD33C, **RECORDED_AT_5B27265}


def step_values(cfg, opts):
    """Losses and the squared norm of every gradient of one TTD step (frozen teacher) of the tiny
    model with non-zero adapters, on a fixed batch of four captions."""
    model = build(cfg, train=True, **{"MODEL.TTD.ENABLED": True, "MODEL.TTD.TEACHER": "frozen", **opts})
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.requires_grad and "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            if name.endswith(".gate"):  # TCL's decoder gates (no other model has one)
                p.fill_(0.5)
    g = torch.Generator().manual_seed(0)
    captions = ["a red circle and a blue square", "a green triangle on a striped background", "a small yellow star",
                "two hearts"]
    batch = [{"image": torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8), "caption": c} for c in captions]
    torch.manual_seed(3)
    losses = model(batch)
    sum(losses.values()).backward()
    grad_sq = sum(float(p.grad.double().square().sum()) for p in model.parameters() if p.grad is not None)
    return {k: float(v) for k, v in losses.items()} | {"grad_sq": grad_sq}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_step_gives_the_losses_and_gradients_of_before_the_speed_work(tiny_cfg, variant):
    got = step_values(tiny_cfg, VARIANTS[variant])
    assert got.keys() == RECORDED[variant].keys()
    for key, expected in RECORDED[variant].items():
        assert got[key] == pytest.approx(expected, rel=1e-4), key
