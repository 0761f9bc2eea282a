"""TTD on the TCL backbone with TTDTrainer on CPU (tiny CLIP, 32 px, 3 iterations): where the
adapters go, what trains, LoRA files that reproduce the trained model on a zero-shot TCL config
(the decoder included when MODEL.TCL.TRAIN_DECODER trains it), and a TCL checkpoint as the start."""
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from conftest import make_tiny_train_cfg
from ttd_d2.data.datasets.synthetic import register_synthetic
from ttd_d2.data.synthetic.writer import generate
from ttd_d2.engine import TTDTrainer
from ttd_d2.modeling.lora import iter_lora_modules, lora_disabled

HEAD = "backbone.clip.visual.tcl_head."


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    split = f"tcl{uuid.uuid4().hex[:8]}"
    generate(root, "image_text", split, 8, 0, image_size=32)
    register_synthetic(root)
    name = f"synth_image_text_{split}"
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def tcl_train_cfg(dataset, output_dir, **opts):
    return make_tiny_train_cfg(dataset, output_dir, **{
        "MODEL.BACKBONE.NAME": "TCL", "MODEL.TTD.ENABLED": True, "MODEL.TTD.LORA.IMAGE_LAYERS": 1, **opts})


def train(cfg):
    torch.manual_seed(0)
    trainer = TTDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    return trainer.model, initial


def changed(model, initial):
    final = model.state_dict()
    return {k for k in initial if not torch.equal(initial[k], final[k])}


def outputs(model, seed=0):
    x = torch.randint(0, 256, (3, 40, 29), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    with torch.no_grad():
        return model.eval()([{"image": x, "caption": "a red circle near a blue square"}])[0]


def assert_same_outputs(a, b):
    for key in ("caption_cos", "tag_masks", "class_logits"):
        if key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5), key
    for method in a["tag_scores"]:
        assert torch.allclose(a["tag_scores"][method], b["tag_scores"][method], atol=1e-5), method


def zero_shot_with(cfg, lora_file, **opts):
    """The zero-shot TCL config of the same model with a LoRA file applied."""
    cfg = cfg.clone()
    cfg.merge_from_list(["MODEL.TTD.ENABLED", False, "MODEL.TTD.LORA.WEIGHTS", str(lora_file),
                         *[x for k, v in opts.items() for x in (k, v)]])
    torch.manual_seed(0)  # the same base CLIP
    return build_model(cfg)


def test_ttd_adapts_the_copied_block_and_trains_only_lora_and_masker(dataset, tmp_path):
    cfg = tcl_train_cfg(dataset, tmp_path)
    model, initial = train(cfg)
    adapted = {name for name, _ in iter_lora_modules(model.backbone.clip)}
    assert {n for n in adapted if n.startswith("visual.")} == {
        f"visual.tcl_head.block.{w}" for w in ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight",
                                                "mlp.c_proj.weight")}
    assert any(n.startswith("transformer.resblocks.") for n in adapted)  # the text tower
    trained = changed(model, initial)
    assert any(".lora_B" in k and k.startswith(HEAD) for k in trained)
    assert all(".lora_" in k or k in ("masker.w", "masker.b") for k in trained), sorted(trained)
    assert_same_outputs(outputs(model), outputs(zero_shot_with(cfg, tmp_path / "model_lora_final.pth")))
    # the frozen teacher (adapters off in backbone.clip) is the TCL trained from: the head is inside
    with lora_disabled(model.backbone.clip):
        teacher = outputs(model)
    base = zero_shot_with(cfg, "")  # no LoRA file
    assert torch.allclose(teacher["caption_cos"], outputs(base)["caption_cos"], atol=1e-5)
    assert not torch.allclose(outputs(model)["caption_cos"], teacher["caption_cos"], atol=1e-5)


def test_train_decoder_trains_it_and_the_lora_file_carries_it(dataset, tmp_path):
    cfg = tcl_train_cfg(dataset, tmp_path, **{"MODEL.TCL.TRAIN_DECODER": True})
    model, initial = train(cfg)
    trained = changed(model, initial)
    assert any(k.startswith(HEAD + "decoder.") and k.endswith(".gate") for k in trained)
    assert all(".lora_" in k or k.startswith(HEAD + "decoder.") or k in ("masker.w", "masker.b") for k in trained)
    lora_file = tmp_path / "model_lora_final.pth"
    content = torch.load(lora_file, weights_only=True)
    assert set(content["trained"]) == {k[len("backbone.clip."):] for k, _ in model.named_parameters()
                                       if k.startswith(HEAD + "decoder.")}
    assert_same_outputs(outputs(model), outputs(zero_shot_with(cfg, lora_file)))


def test_a_lora_file_with_the_contrastive_loss_applies_on_a_config_without(dataset, tmp_path):
    """With the contrastive loss the CLIP's own last block (global path only) is adapted too; a
    config without that loss applies those adapters frozen."""
    cfg = tcl_train_cfg(dataset, tmp_path, **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0})
    model, initial = train(cfg)
    assert any(k.startswith("backbone.clip.visual.transformer.resblocks.1.") and ".lora_B" in k
               for k in changed(model, initial))
    evaluated = zero_shot_with(cfg, tmp_path / "model_lora_final.pth", **{"MODEL.CLIP.CONTRASTIVE_WEIGHT": 0.0})
    global_block = [m for n, m in iter_lora_modules(evaluated.backbone.clip) if n.startswith("visual.transformer.resblocks.1.")]
    assert len(global_block) == 4 and not any(p.requires_grad for m in global_block for p in m.parameters())
    assert_same_outputs(outputs(model), outputs(evaluated))
