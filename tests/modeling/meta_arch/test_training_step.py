"""Training steps of the TTD meta-architecture on the tiny random CLIP (CPU): TTD trains only the
adapters and the masker, contrastive training every CLIP weight; edge captions, batches without
a tag; MODEL.TTD.LORA.IMAGE_LAYERS; a short run lowers the TTD loss. Every tag scoring's selected
tags, targets and losses against their definitions: test_distillation_options.py."""
import pytest
import torch

from conftest import build
from meta_arch_fixtures import caption_batch, finite, random_image, shape_batch, trainable_names, ttd_opts
from ttd_d2.modeling.lora import iter_lora_modules, lora_disabled, lora_parameters


def test_ttd_training_losses_and_trainable_parameters(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts())
    names = trainable_names(model)
    lora_ids = {id(p) for p in lora_parameters(model.backbone.clip)}
    assert lora_ids and all(p.requires_grad for p in lora_parameters(model.backbone.clip))
    expected = {n for n, p in model.named_parameters() if id(p) in lora_ids} | {"masker.w", "masker.b"}
    assert names == expected
    assert all("lora_" in n for n in names - {"masker.w", "masker.b"})
    losses = model(caption_batch(["a red circle and a blue square", "a green triangle"]))
    assert set(losses) == {"loss_distill", "loss_tag"}
    assert finite(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in names)


def test_contrastive_training_trains_all_clip_weights(tiny_cfg):
    model = build(tiny_cfg, train=True, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0})
    clip_params = list(model.backbone.clip.named_parameters())
    assert clip_params and all(p.requires_grad for _, p in clip_params)
    assert not list(iter_lora_modules(model.backbone.clip))
    losses = model(caption_batch(["a red circle", "a blue square", "the of and", ""]))
    assert set(losses) == {"loss_contrastive"}
    assert finite(losses)
    losses["loss_contrastive"].backward()
    assert model.backbone.clip.visual.conv1.weight.grad is not None
    assert model.backbone.clip.token_embedding.weight.grad is not None


LONG_CAPTION = " ".join(f"word{i % 150}x shape{i}" for i in range(150))  # 300 words, 300 distinct tags


@pytest.mark.parametrize("teacher", ["frozen", "self"])
@pytest.mark.parametrize("contrastive", [0.0, 1.0])
def test_edge_captions_in_training_batch(tiny_cfg, teacher, contrastive):
    assert len(LONG_CAPTION.split()) == 300
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.TEACHER": teacher, "MODEL.CLIP.CONTRASTIVE_WEIGHT": contrastive}))
    batch = caption_batch(["", "the of and", LONG_CAPTION, "a red circle"])
    losses = model(batch)
    assert {"loss_distill", "loss_tag"} <= set(losses)
    assert finite(losses)
    sum(losses.values()).backward()
    stats = model.tag_statistics
    # the tiny CLIP's 14-token window holds "word0x shape0 word1x shape1 word2x" (3+2+3+2+3
    # tokens; "shape2" would be the 15th): 5 of the long caption's 300 tags
    assert float(stats["candidates_per_caption"]) == pytest.approx((0 + 0 + 5 + 2) / 4)


def test_batch_without_any_tag(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts())
    losses = model(caption_batch(["", "the of and", "!!! 123"]))
    assert finite(losses)
    assert losses["loss_distill"].item() == 0.0 and losses["loss_tag"].item() == 0.0
    sum(losses.values()).backward()  # still part of the graph


# ---------------------------------------------------------------------------------- image layers
def test_image_layers_one_adapts_only_last_block(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts(**{"MODEL.TTD.LORA.IMAGE_LAYERS": 1}))
    names = [n for n, _ in iter_lora_modules(model.backbone.clip)]
    visual = [n for n in names if n.startswith("visual.")]
    text = [n for n in names if not n.startswith("visual.")]
    assert len(visual) == 4 and all(n.startswith("visual.transformer.resblocks.1.") for n in visual)
    assert len(text) == 8  # both text blocks
    assert model.shared_image_blocks == 1
    assert not any(p.requires_grad for p in model.backbone.clip.visual.transformer.resblocks[0].parameters())
    losses = model(caption_batch(["a red circle and a blue square", "a green triangle"]))
    assert finite(losses)
    sum(losses.values()).backward()
    for n, m in iter_lora_modules(model.backbone.clip):
        assert m.lora_B.grad is not None, n
    # the trunk output is shared; the adapted last block still changes the dense output
    with torch.no_grad():
        for _, m in iter_lora_modules(model.backbone.clip):
            m.lora_B.fill_(0.1)
        x = model.normalize(random_image(30))[None]
        live = model.backbone(x)["dense"]
        with lora_disabled(model.backbone.clip):
            off = model.backbone(x)["dense"]
    assert not torch.allclose(live, off, atol=1e-3)


@pytest.mark.parametrize("layers", [-1, 3])
def test_image_layers_out_of_range_raises(tiny_cfg, layers):
    with pytest.raises(ValueError, match="IMAGE_LAYERS"):
        build(tiny_cfg, **ttd_opts(**{"MODEL.TTD.LORA.IMAGE_LAYERS": layers}))


# ---------------------------------------------------------------------------------- a short run
def test_short_training_run_lowers_ttd_loss(tiny_cfg):
    model = build(tiny_cfg, train=True, **ttd_opts())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    batch = shape_batch()
    totals = []
    for _ in range(30):
        losses = model(batch)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        model.update_teacher()
        totals.append(total.item())
    assert sum(totals[-5:]) / 5 < totals[0], totals
