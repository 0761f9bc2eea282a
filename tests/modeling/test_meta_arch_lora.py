"""LoRA set-up of the TTD meta-architecture (ttd_d2/modeling/meta_arch/ttd_lora.py): adapters
only where a loss reaches them, so every trainable parameter gets a gradient at every step
(what DistributedDataParallel with find_unused_parameters=False needs; the distributed run
itself is tests/engine/test_distributed_training.py); the EMA teacher's start from LoRA files."""
import pytest
import torch
from detectron2.modeling import build_model

from ttd_d2.engine.hooks import lora_checkpoint
from ttd_d2.modeling.lora import iter_lora_modules, lora_deltas
from ttd_d2.modeling.meta_arch.ttd_lora import image_adapter_plan

ALL = ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]


def build(cfg, seed=0, train=False, **opts):
    cfg = cfg.clone()
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, v)])
    torch.manual_seed(seed)
    return build_model(cfg).train(train)


def batch(captions=("a red circle and a blue square", "a green triangle")):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8), "caption": c} for c in captions]


def test_image_adapter_plan():
    assert image_adapter_plan(3, ALL, 0, "maskclip", False) == {0: ALL, 1: ALL, 2: ALL}
    assert image_adapter_plan(3, ALL, 2, "sclip", False) == {1: ALL, 2: ALL}
    for head in ("clearclip", "naclip"):
        assert image_adapter_plan(3, ALL, 1, head, False) == {2: ["attn.in_proj", "attn.out_proj"]}
        assert image_adapter_plan(3, ALL, 1, head, True) == {2: ALL}  # the contrastive loss reaches the MLP
        assert image_adapter_plan(2, ["mlp.c_fc"], 0, head, False) == {0: ["mlp.c_fc"]}
    assert image_adapter_plan(2, ALL, 0, "vanilla", False) == {0: ALL, 1: ALL}
    with pytest.raises(ValueError, match="IMAGE_LAYERS"):
        image_adapter_plan(2, ALL, 3, "maskclip", False)


# teacher, tag scoring, contrastive weight: the self teacher reads the global embedding detached
CASES = [("self", "image_text", 0.0), ("self", "s_image", 1.0), ("frozen", "s_pixel", 0.0), ("ema", "s_text", 1.0)]


@pytest.mark.parametrize("teacher, scoring, contrastive", CASES)
@pytest.mark.parametrize("mode", ["vanilla", "maskclip", "sclip", "clearclip", "naclip"])
def test_every_trainable_parameter_gets_a_gradient(tiny_cfg, mode, teacher, scoring, contrastive):
    model = build(tiny_cfg, train=True, **{
        "MODEL.TTD.ENABLED": True, "MODEL.CLIP.DENSE_MODE": mode, "MODEL.TTD.TEACHER": teacher,
        "MODEL.TTD.TAG_SCORING": scoring, "MODEL.CLIP.CONTRASTIVE_WEIGHT": contrastive,
    })
    sum(model(batch()).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    last_mlp = [n for n, _ in iter_lora_modules(model.backbone.clip) if n.startswith("visual.transformer.resblocks.1.mlp")]
    assert bool(last_mlp) == (mode not in ("clearclip", "naclip") or contrastive > 0)


@pytest.mark.parametrize("mode", ["clearclip", "maskclip"])
def test_image_layers_one_with_detached_global(tiny_cfg, mode):
    """The self teacher's global embedding, computed without a graph, must not take the graph
    away from the adapted weights that parametrize.cached() shares with the dense path."""
    model = build(tiny_cfg, train=True, **{
        "MODEL.TTD.ENABLED": True, "MODEL.CLIP.DENSE_MODE": mode, "MODEL.TTD.TEACHER": "self",
        "MODEL.TTD.TAG_SCORING": "s_image", "MODEL.TTD.LORA.IMAGE_LAYERS": 1,
    })
    sum(model(batch()).values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_contrastive_pretraining_trains_all_clip_weights_and_not_the_masker(tiny_cfg):
    model = build(tiny_cfg, train=True, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0})
    assert not model.masker.w.requires_grad and not model.masker.b.requires_grad
    assert all(p.requires_grad for p in model.backbone.clip.parameters())
    sum(model(batch()).values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


# ---------------------------------------------------------------------------------- EMA teacher
def _trained(tiny_cfg, teacher, steps=2):
    model = build(tiny_cfg, train=True, **{"MODEL.TTD.ENABLED": True, "MODEL.TTD.TEACHER": teacher, "MODEL.TTD.EMA_DECAY": 0.5})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        sum(model(batch()).values()).backward()
        optimizer.step()
        model.update_teacher()
    return model


def test_lora_file_without_ema_starts_the_ema_teacher_at_its_adapters(tiny_cfg, tmp_path):
    trained = _trained(tiny_cfg, "frozen")
    path = tmp_path / "model_lora_frozen.pth"
    torch.save(lora_checkpoint(trained), path)
    assert "ema" not in torch.load(path, weights_only=True)
    model = build(tiny_cfg, **{"MODEL.TTD.ENABLED": True, "MODEL.TTD.TEACHER": "ema", "MODEL.TTD.LORA.WEIGHTS": str(path)})
    expected = lora_deltas(trained.backbone.clip)
    assert set(model.ema_state) == set(expected)
    assert any(v.abs().max() > 0 for v in expected.values())
    for name, delta in expected.items():
        torch.testing.assert_close(model.ema_state[name], delta)


def test_lora_file_carries_the_ema(tiny_cfg, tmp_path):
    trained = _trained(tiny_cfg, "ema")
    path = tmp_path / "model_lora_ema.pth"
    torch.save(lora_checkpoint(trained), path)
    model = build(tiny_cfg, **{"MODEL.TTD.ENABLED": True, "MODEL.TTD.TEACHER": "ema", "MODEL.TTD.LORA.WEIGHTS": str(path)})
    live = lora_deltas(model.backbone.clip)
    assert set(model.ema_state) == set(trained.ema_state)
    assert all(torch.equal(model.ema_state[k], v) for k, v in trained.ema_state.items())
    assert any(not torch.allclose(model.ema_state[k], live[k]) for k in live)  # the EMA, not the adapters
