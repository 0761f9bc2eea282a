"""MODEL.CLIP.BF16_CPU: the towers under bfloat16 autocast on the CPU (the GPU's precision),
close to float32 but not equal; a TTD step trains float32 adapters; off by default."""
import pytest
import torch

from conftest import build
from ttd_d2.modeling.backbone import clip_dense
from ttd_d2.modeling.backbone.clip_dense import cpu_has_native_bf16


def _outputs(cfg, bf16_cpu, images, name="CLIPDense"):
    model = build(cfg, **{"MODEL.BACKBONE.NAME": name, "MODEL.CLIP.BF16_CPU": bf16_cpu})
    with torch.no_grad():
        out = model.backbone(images)
        text = model.backbone.encode_text(["a photo of a cat.", "a dog"])
    return out, text


def test_off_by_default(tiny_cfg):
    assert tiny_cfg.MODEL.CLIP.BF16_CPU is False
    model = build(tiny_cfg)
    assert model.backbone.bf16_cpu is False


@pytest.mark.parametrize("name", ["CLIPDense", "TCL"])
def test_bf16_towers_are_close_to_float32_and_not_equal(tiny_cfg, name):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    (out32, text32), (out16, text16) = (_outputs(tiny_cfg, flag, images, name) for flag in (False, True))
    assert out32["dense"].dtype == torch.float32
    for a, b in ((out32["dense"], out16["dense"]), (out32["global"], out16["global"]), (text32, text16)):
        b = b.float()
        assert not torch.equal(a, b)  # bf16 did run
        cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
        assert cos.min() > 0.99


def test_a_ttd_step_under_cpu_bf16_trains_float32_adapters(tiny_cfg):
    model = build(tiny_cfg, train=True, **{"MODEL.TTD.ENABLED": True, "MODEL.CLIP.BF16_CPU": True})
    torch.manual_seed(0)
    batch = [{"image": torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8), "caption": "a red circle and a blue square"}
             for _ in range(2)]
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and all(p.dtype == torch.float32 for p in adapters)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_cpu_has_native_bf16_reads_torch_cpu(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(clip_dense.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(clip_dense.torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_has_native_bf16() is expected
