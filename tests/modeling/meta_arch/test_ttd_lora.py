"""LoRA set-up of the TTD meta-architecture (ttd_d2/modeling/meta_arch/ttd_lora.py): adapters
only where a loss reaches them, so every trainable parameter gets a gradient at every step
(what DistributedDataParallel with find_unused_parameters=False needs; the distributed run
itself is tests/engine/test_distributed_training.py); LoRA files: applied whenever
MODEL.TTD.LORA.WEIGHTS is set, settings checked, the EMA teacher's start."""
import pytest
import torch

from conftest import build
from ttd_d2.engine.hooks import lora_checkpoint
from ttd_d2.modeling.lora import iter_lora_modules, lora_deltas
from ttd_d2.modeling.lora.file import save_lora_file
from ttd_d2.modeling.meta_arch.ttd_lora import image_adapter_plan

ALL = ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]


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


@pytest.mark.parametrize("path", ["maskclip", "clearclip", "naclip"])
@pytest.mark.parametrize("ttd", [True, False])
def test_tcl_dense_path_leaves_no_trainable_parameter_without_gradient(tiny_cfg, path, ttd):
    """MODEL.TCL.DENSE_PATH: under TTD (adapters) and under TCL's own objective (the head trains),
    a path that skips the copied block's MLP gets neither adapters nor trainable weights there."""
    objective = {} if ttd else {"MODEL.TCL.LOSS.CONTRASTIVE_WEIGHT": 0.1, "MODEL.TCL.LOSS.AREA_WEIGHT": 0.4,
                                "MODEL.TCL.LOSS.TV_WEIGHT": 1.0}
    model = build(tiny_cfg, train=True, **{"MODEL.BACKBONE.NAME": "TCL", "MODEL.TCL.DENSE_PATH": path,
                                           "MODEL.TTD.ENABLED": ttd, **objective})
    sum(model(batch()).values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    head_mlp = [p.requires_grad for p in model.backbone.head.block.mlp.parameters()]
    head_mlp_adapters = [n for n, _ in iter_lora_modules(model.backbone.clip) if "tcl_head.block.mlp" in n]
    skipped = path in ("clearclip", "naclip")
    assert (any(head_mlp) or bool(head_mlp_adapters)) is not skipped


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


# ---------------------------------------------------------------------------------- LoRA files
def _perturbed_file(model, path, seed=0):
    """Give ``model`` non-trivial adapters and masker, write its LoRA file to ``path``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in iter_lora_modules(model.backbone.clip):
            m.lora_B.copy_(0.05 * torch.randn(m.lora_B.shape, generator=g))
        model.masker.w.add_(2.0)
    save_lora_file(lora_checkpoint(model), str(path))
    return str(path)


def _outputs(model):
    inputs = [{"image": img["image"], "caption": img["caption"]} for img in batch()]
    with torch.no_grad():
        model.eval()
        out = model(inputs)
        x = model.normalize(inputs[0]["image"])[None]
        return out, model.backbone(x)


def _same(a, b):
    (out_a, feats_a), (out_b, feats_b) = a, b
    return all(torch.equal(x["caption_mask"], y["caption_mask"]) and torch.equal(x["tag_scores"]["s_pixel"], y["tag_scores"]["s_pixel"])
               for x, y in zip(out_a, out_b)) and all(torch.equal(feats_a[k], feats_b[k]) for k in feats_a)


@pytest.mark.parametrize("mode", ["maskclip", "clearclip"])
def test_lora_weights_apply_without_ttd(tiny_cfg, tmp_path, mode):
    """MODEL.TTD.LORA.WEIGHTS on a zero-shot config (TTD off) gives the TTD model's outputs."""
    path = _perturbed_file(build(tiny_cfg, **{"MODEL.TTD.ENABLED": True, "MODEL.CLIP.DENSE_MODE": mode}), tmp_path / "f.pth")
    with_ttd = build(tiny_cfg, **{"MODEL.TTD.ENABLED": True, "MODEL.CLIP.DENSE_MODE": mode, "MODEL.TTD.LORA.WEIGHTS": path})
    without = build(tiny_cfg, **{"MODEL.CLIP.DENSE_MODE": mode, "MODEL.TTD.LORA.WEIGHTS": path})
    base = build(tiny_cfg, **{"MODEL.CLIP.DENSE_MODE": mode})
    assert _same(_outputs(without), _outputs(with_ttd))
    assert not _same(_outputs(without), _outputs(base))
    assert not [n for n, p in without.named_parameters() if p.requires_grad]  # nothing trains without TTD or contrastive
    assert without.masker.w.item() == pytest.approx(base.masker.w.item() + 2.0)
    merged = build(tiny_cfg, **{"MODEL.CLIP.DENSE_MODE": mode, "MODEL.TTD.LORA.WEIGHTS": path,
                                "MODEL.TTD.LORA.MERGE_FOR_INFERENCE": True})
    assert not list(iter_lora_modules(merged.backbone.clip)) and not [p for p in merged.parameters() if p.requires_grad]
    (_, feats), (_, ref_feats) = _outputs(merged), _outputs(with_ttd)
    torch.testing.assert_close(feats["dense"], ref_feats["dense"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("opts, key", [
    ({"MODEL.TTD.LORA.ALPHA": 8.0}, "MODEL.TTD.LORA.ALPHA is 8.0 but .*f.pth was trained with 16.0"),
    ({"MODEL.TTD.LORA.RANK": 4}, "MODEL.TTD.LORA.RANK is 4 but .* was trained with 8"),
    ({"MODEL.CLIP.DENSE_MODE": "clearclip"}, "MODEL.CLIP.DENSE_MODE is clearclip but .* was trained with maskclip"),
    ({"MODEL.TTD.LORA.TARGETS": ["mlp.c_fc"]}, "MODEL.TTD.LORA.TARGETS is"),
    ({"MODEL.TTD.LORA.IMAGE_LAYERS": 1}, "MODEL.TTD.LORA.IMAGE_LAYERS is 1 but .* was trained with 2"),
    ({"MODEL.TTD.ENABLED": False, "MODEL.TTD.LORA.ALPHA": 32.0}, "MODEL.TTD.LORA.ALPHA is 32.0"),
])
def test_lora_weights_with_other_settings_raise_naming_the_key(tiny_cfg, tmp_path, opts, key):
    path = _perturbed_file(build(tiny_cfg, **{"MODEL.TTD.ENABLED": True}), tmp_path / "f.pth")
    with pytest.raises(ValueError, match=key):
        build(tiny_cfg, **{"MODEL.TTD.ENABLED": True, "MODEL.TTD.LORA.WEIGHTS": path, **opts})


def test_tcl_lora_weights_of_another_dense_path_name_tcls_key(tiny_cfg, tmp_path):
    """Under TCL the file's dense_mode is the copied block's path: the error names
    MODEL.TCL.DENSE_PATH, the key that fixes it (not MODEL.CLIP.DENSE_MODE)."""
    tcl = {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TTD.ENABLED": True, "MODEL.TTD.LORA.IMAGE_LAYERS": 1}
    path = _perturbed_file(build(tiny_cfg, **tcl, **{"MODEL.TCL.DENSE_PATH": "clearclip"}), tmp_path / "f.pth")
    with pytest.raises(ValueError, match="MODEL.TCL.DENSE_PATH is maskclip but .* was trained with clearclip"):
        build(tiny_cfg, **tcl, **{"MODEL.TTD.LORA.WEIGHTS": path})


def test_an_edited_lora_file_whose_shapes_differ_names_the_file(tiny_cfg, tmp_path):
    path = _perturbed_file(build(tiny_cfg, **{"MODEL.TTD.ENABLED": True}), tmp_path / "f.pth")
    content = torch.load(path, weights_only=True)
    key = next(k for k in content["lora"] if k.endswith("lora_A"))
    content["lora"][key] = torch.zeros(content["lora"][key].shape[0] + 1, content["lora"][key].shape[1])
    torch.save(content, path)
    with pytest.raises(ValueError, match=f"MODEL.TTD.LORA.WEIGHTS '{path}' does not fit this model although its "
                                         f"settings do (?s:.*)shape mismatch(?s:.*){key}"):
        build(tiny_cfg, **{"MODEL.TTD.ENABLED": True, "MODEL.TTD.LORA.WEIGHTS": path})


def test_lora_weights_of_another_arch_raise(tiny_cfg, tmp_path):
    path = _perturbed_file(build(tiny_cfg, **{"MODEL.TTD.ENABLED": True}), tmp_path / "f.pth")
    other = tmp_path / "tiny_clip_other.json"
    other.write_text(open(tiny_cfg.MODEL.CLIP.ARCH).read())  # same shapes, another model
    with pytest.raises(ValueError, match="MODEL.CLIP.ARCH is tiny_clip_other but .* was trained with tiny_clip"):
        build(tiny_cfg, **{"MODEL.CLIP.ARCH": str(other), "MODEL.TTD.LORA.WEIGHTS": path})


@pytest.mark.parametrize("ttd", [True, False])
def test_missing_or_corrupt_lora_weights_raise(tiny_cfg, tmp_path, ttd):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=f"MODEL.TTD.LORA.WEIGHTS '{missing}' does not exist"):
        build(tiny_cfg, **{"MODEL.TTD.ENABLED": ttd, "MODEL.TTD.LORA.WEIGHTS": missing})
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(ValueError, match=f"MODEL.TTD.LORA.WEIGHTS '{corrupt}' cannot be read"):
        build(tiny_cfg, **{"MODEL.TTD.ENABLED": ttd, "MODEL.TTD.LORA.WEIGHTS": str(corrupt)})


def test_contrastive_run_file_loads_into_a_config_without_contrastive(tiny_cfg, tmp_path):
    """clearclip + contrastive adapts the last MLP; without the contrastive loss those adapters
    are applied (the global embedding is the trained one) and frozen (no loss reaches them)."""
    opts = {"MODEL.TTD.ENABLED": True, "MODEL.CLIP.DENSE_MODE": "clearclip"}
    trained = build(tiny_cfg, **opts, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0})
    path = _perturbed_file(trained, tmp_path / "f.pth")
    model = build(tiny_cfg, train=True, **opts, **{"MODEL.TTD.LORA.WEIGHTS": path})
    last_mlp = {n: m for n, m in iter_lora_modules(model.backbone.clip) if ".resblocks.1.mlp." in n and n.startswith("visual")}
    assert len(last_mlp) == 2 and not any(p.requires_grad for m in last_mlp.values() for p in m.parameters())
    sum(model(batch()).values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert _same(_outputs(model), _outputs(trained))
    # and the other way round: a file without them leaves the contrastive config's at zero
    plain = _perturbed_file(build(tiny_cfg, **opts), tmp_path / "plain.pth")
    model = build(tiny_cfg, **opts, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0, "MODEL.TTD.LORA.WEIGHTS": plain})
    assert all(torch.equal(m.lora_B, torch.zeros_like(m.lora_B)) for n, m in iter_lora_modules(model.backbone.clip)
               if n.startswith("visual.transformer.resblocks.1.mlp"))


def test_contrastive_training_from_a_lora_file_merges_it(tiny_cfg, tmp_path):
    path = _perturbed_file(build(tiny_cfg, **{"MODEL.TTD.ENABLED": True}), tmp_path / "f.pth")
    applied = build(tiny_cfg, **{"MODEL.TTD.LORA.WEIGHTS": path})
    model = build(tiny_cfg, train=True, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0, "MODEL.TTD.LORA.WEIGHTS": path})
    assert not list(iter_lora_modules(model.backbone.clip))
    assert all(p.requires_grad for p in model.backbone.clip.parameters())
    x = model.normalize(batch()[0]["image"])[None]
    with torch.no_grad():
        torch.testing.assert_close(model.eval().backbone(x)["dense"], applied.backbone(x)["dense"], atol=1e-5, rtol=1e-5)
