"""LoRA-only checkpoints of the TTD meta-architecture (``lora_checkpoint``, docs/LORA_FILES.md)
on the tiny random CLIP (CPU): the round trip through MODEL.TTD.LORA.WEIGHTS, with and without
MERGE_FOR_INFERENCE; a missing file; a plain full-model checkpoint loads into a TTD model."""
import pytest
import torch
from torch.nn.utils import parametrize

from conftest import build
from meta_arch_fixtures import SCORE_KEYS, random_image, ttd_opts
from ttd_d2.engine.hooks import lora_checkpoint
from ttd_d2.modeling.lora import LoRALinear, iter_lora_modules, lora_state_dict


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in iter_lora_modules(model.backbone.clip):
            m.lora_B.copy_(0.05 * torch.randn(m.lora_B.shape, generator=g))
        model.masker.w.add_(2.0)
        model.masker.b.sub_(0.5)


def _caption_outputs(model):
    inputs = [
        {"image": random_image(40, 32, 48), "height": 64, "width": 96, "caption": "a red circle and a blue square"},
        {"image": random_image(41), "caption": "a green triangle"},
    ]
    with torch.no_grad():
        return model.eval()(inputs)


def test_lora_checkpoint_round_trip(tiny_cfg, tmp_path):
    model = build(tiny_cfg, train=True, **ttd_opts())
    _perturb(model)
    ckpt = lora_checkpoint(model)
    assert set(ckpt) == {"format", "version", "settings", "lora", "masker"}  # docs/LORA_FILES.md
    assert set(ckpt["masker"]) == {"w", "b"}
    assert all(not v.requires_grad for v in ckpt["lora"].values())
    path = tmp_path / "model_lora_test.pth"
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    assert set(loaded["lora"]) == set(lora_state_dict(model.backbone.clip))

    expected = _caption_outputs(model)
    fresh = build(tiny_cfg, **ttd_opts(**{"MODEL.TTD.LORA.WEIGHTS": str(path)}))
    got = _caption_outputs(fresh)
    for e, g in zip(expected, got):
        assert torch.equal(e["caption_mask"], g["caption_mask"])
        for m in SCORE_KEYS:
            assert torch.equal(e["tag_scores"][m], g["tag_scores"][m])
    base = _caption_outputs(build(tiny_cfg))
    assert not torch.allclose(base[0]["caption_mask"], expected[0]["caption_mask"], atol=1e-3)

    merged = build(tiny_cfg, **ttd_opts(**{"MODEL.TTD.LORA.WEIGHTS": str(path), "MODEL.TTD.LORA.MERGE_FOR_INFERENCE": True}))
    clip = merged.backbone.clip
    assert not list(iter_lora_modules(clip))
    assert not any(isinstance(m, LoRALinear) or parametrize.is_parametrized(m) for m in clip.modules())
    assert not any("lora" in n or "parametrizations" in n for n in clip.state_dict())
    got = _caption_outputs(merged)
    for e, g in zip(expected, got):
        assert torch.allclose(e["caption_mask"], g["caption_mask"], atol=1e-5)
        assert torch.allclose(e["tag_scores"]["s_pixel"], g["tag_scores"]["s_pixel"], atol=1e-5)


def test_lora_weights_missing_file_raises(tiny_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="LORA.WEIGHTS"):
        build(tiny_cfg, **ttd_opts(**{"MODEL.TTD.LORA.WEIGHTS": str(tmp_path / "nope.pth")}))


def test_plain_checkpoint_loads_into_ttd_model(tiny_cfg, tmp_path):
    """A full-model checkpoint without adapters (e.g. a contrastive run) loads through
    MODEL.WEIGHTS into a TTD model: the LoRA pre-hooks map the plain weight names."""
    from detectron2.checkpoint import DetectionCheckpointer

    plain = build(tiny_cfg, seed=3, train=True, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0})
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("model_plain")
    model = build(tiny_cfg, seed=4, **ttd_opts())
    DetectionCheckpointer(model).resume_or_load(str(tmp_path / "model_plain.pth"), resume=False)
    x = model.normalize(random_image(52))[None]
    with torch.no_grad():
        assert torch.allclose(model.eval().backbone(x)["dense"], plain.eval().backbone(x)["dense"], atol=1e-5)
    assert all(not p.requires_grad for n, p in model.backbone.clip.named_parameters() if "lora_" not in n)
