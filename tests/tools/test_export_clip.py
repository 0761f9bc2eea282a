"""tools/export_clip.py: ttd_d2 checkpoint -> plain open_clip checkpoint (fp16) that
``MODEL.CLIP.PRETRAINED`` loads back."""

from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import load_script
from ttd_d2.modeling.lora import iter_lora_modules, merge_lora

def _load_tool():
    return load_script("tools/export_clip.py")


export_clip = _load_tool()



def build(cfg, seed=0, **opts):
    cfg = cfg.clone()
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, v)])
    torch.manual_seed(seed)
    return build_model(cfg)


def images(n=2, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def dense(model, x):
    with torch.no_grad():
        return model.backbone(torch.stack([model.normalize(i) for i in x]))


def train_one_step(model, cfg):
    """One AdamW step; returns (model in eval mode, optimizer, scheduler) like a trainer holds them."""
    from detectron2.solver import build_lr_scheduler

    model.train()
    g = torch.Generator().manual_seed(1)
    batch = [{"image": torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8), "caption": c}
             for c in ("a red circle", "a blue square", "a green triangle")]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = model(batch)
    sum(losses.values()).backward()
    optimizer.step()
    scheduler = build_lr_scheduler(cfg, optimizer)
    return model.eval(), optimizer, scheduler


def assert_fp16_export(path, reference_model):
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = {k for k in reference_model.backbone.clip.state_dict()}
    assert set(state) == expected
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    return state


def test_export_trained_checkpoint_reloads(tiny_cfg, tmp_path):
    tiny_cfg.SOLVER.MAX_ITER = 10
    model, optimizer, scheduler = train_one_step(build(tiny_cfg, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0}), tiny_cfg)
    # saved as DefaultTrainer's checkpointer does: model + optimizer + scheduler + iteration
    checkpointer = DetectionCheckpointer(model, save_dir=str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    checkpointer.save("model_final", iteration=0)
    src = tmp_path / "model_final.pth"
    assert {"model", "optimizer", "scheduler", "iteration"} <= set(torch.load(src, map_location="cpu", weights_only=False))
    dst = tmp_path / "export" / "tiny_clip.pt"
    count = export_clip.export(str(src), str(dst))
    assert count == len(model.backbone.clip.state_dict())
    assert not Path(str(dst) + ".tmp").exists()
    state = assert_fp16_export(dst, model)

    # the exported weights differ from a fresh random model, so the reload below is meaningful
    fresh = build(tiny_cfg, seed=123)
    x = images()
    ref = dense(model, x)
    assert not torch.allclose(dense(fresh, x)["dense"], ref["dense"], atol=1e-2)

    loaded = build(tiny_cfg, seed=123, **{"MODEL.CLIP.PRETRAINED": str(dst)}).eval()
    for k, v in loaded.backbone.clip.state_dict().items():
        assert torch.equal(v, state[k].to(v.dtype)), k
    got = dense(loaded, x)
    assert torch.allclose(got["dense"], ref["dense"], atol=2e-2, rtol=2e-2)
    assert torch.allclose(got["global"], ref["global"], atol=2e-2, rtol=2e-2)
    # exactly the model with its weights rounded to fp16
    with torch.no_grad():
        for p in model.backbone.clip.parameters():
            p.copy_(p.half().float())
    assert torch.allclose(got["dense"], dense(model, x)["dense"], atol=1e-5)


def test_export_fp32_and_plain_state_dict(tiny_cfg, tmp_path):
    model = build(tiny_cfg).eval()
    src = tmp_path / "plain.pth"
    torch.save({"model": model.state_dict()}, src)
    dst = tmp_path / "fp32.pt"
    export_clip.export(str(src), str(dst), fp16=False)
    state = torch.load(dst, map_location="cpu", weights_only=True)
    for k, v in model.backbone.clip.state_dict().items():
        assert torch.equal(state[k], v), k
    loaded = build(tiny_cfg, seed=5, **{"MODEL.CLIP.PRETRAINED": str(dst)}).eval()
    x = images(seed=3)
    assert torch.allclose(dense(loaded, x)["dense"], dense(model, x)["dense"], atol=1e-6)


def test_export_merged_ttd_model(tiny_cfg, tmp_path):
    model = build(tiny_cfg, **{"MODEL.TTD.ENABLED": True}).eval()
    with torch.no_grad():
        for _, m in iter_lora_modules(model.backbone.clip):
            m.lora_B.fill_(0.05)
    merge_lora(model.backbone.clip)
    src = tmp_path / "merged.pth"
    torch.save({"model": model.state_dict()}, src)
    dst = tmp_path / "merged.pt"
    export_clip.export(str(src), str(dst))
    loaded = build(tiny_cfg, seed=9, **{"MODEL.CLIP.PRETRAINED": str(dst)}).eval()
    x = images(seed=4)
    assert torch.allclose(dense(loaded, x)["dense"], dense(model, x)["dense"], atol=2e-2, rtol=2e-2)


def test_export_rejects_lora_checkpoint(tiny_cfg, tmp_path):
    model = build(tiny_cfg, **{"MODEL.TTD.ENABLED": True})
    src = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict()}, src)
    dst = tmp_path / "out.pt"
    with pytest.raises(ValueError, match="LoRA"):
        export_clip.export(str(src), str(dst))
    assert not dst.exists()


def test_export_rejects_tcl_checkpoint(tiny_cfg, tmp_path):
    """TCL's head lives in the open_clip model (clip.visual.tcl_head) but open_clip cannot load it."""
    model = build(tiny_cfg, **{"MODEL.BACKBONE.NAME": "TCL"})
    src = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict()}, src)
    with pytest.raises(ValueError, match="is a TCL model"):
        export_clip.export(str(src), str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()


def test_export_rejects_non_ttd_checkpoint(tmp_path):
    src = tmp_path / "other.pth"
    torch.save({"model": {"head.weight": torch.zeros(2)}}, src)
    with pytest.raises(ValueError, match="backbone.clip"):
        export_clip.export(str(src), str(tmp_path / "out.pt"))


def test_export_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        export_clip.export(str(tmp_path / "nope.pth"), str(tmp_path / "out.pt"))
