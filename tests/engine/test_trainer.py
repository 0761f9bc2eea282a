"""TTDTrainer end to end on CPU with a tiny synthetic dataset: training with the TTD hook,
LoRA-only checkpoints, evaluation by dataset type, mappers on unreadable images."""
import os
import uuid
from pathlib import Path

import pytest
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from conftest import load_script, make_tiny_cfg, make_tiny_train_cfg
from ttd_d2.data.collate import stack_field
from ttd_d2.data.datasets.synthetic import register_synthetic
from ttd_d2.data import mappers
from ttd_d2.data.synthetic.writer import generate
from ttd_d2.engine import TTDTrainer
from ttd_d2.modeling.backbone.clip_loading import build_tokenizer
from ttd_d2.evaluation import CaptionSegEvaluator
from ttd_d2.modeling.lora import lora_state_dict

TINY_ARCH = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_clip.json")
STAT_KEYS = ("ttd/candidates_per_caption", "ttd/selected_per_caption", "ttd/target_caption_iou")





@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Tiny synthetic splits (32 px) under unique names: {"train", "semseg", "captions"} -> dataset name."""
    root = tmp_path_factory.mktemp("synthetic")
    tag = uuid.uuid4().hex[:8]
    splits = {"train": ("image_text", f"tr{tag}", 0, 16), "semseg": ("semseg", f"te{tag}", 100, 4),
              "captions": ("captions", f"te{tag}", 100, 4)}
    for layout, split, seed, n in splits.values():
        generate(root, layout, split, n, seed, image_size=32)
    registered = register_synthetic(root)
    names = {key: f"synth_{layout}_{split}" for key, (layout, split, _, _) in splits.items()}
    assert set(names.values()) <= set(registered)
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def train_cfg(synthetic, output_dir, **opts):
    return make_tiny_train_cfg(synthetic["train"], output_dir, **{
        "MODEL.TTD.ENABLED": True, "SOLVER.CHECKPOINT_PERIOD": 2, **opts})


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """A 3-iteration TTD run; returns (trainer, cfg, initial LoRA state)."""
    out = tmp_path_factory.mktemp("ttd_run")
    cfg = train_cfg(synthetic, out)
    torch.manual_seed(0)
    trainer = TTDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    return trainer, cfg, initial


def test_train_runs_and_logs_tag_statistics(trained):
    trainer, cfg, _ = trained
    assert trainer.iter == cfg.SOLVER.MAX_ITER
    for key in STAT_KEYS:
        values = [v for v, _ in trainer.storage.history(key).values()]
        assert len(values) == cfg.SOLVER.MAX_ITER, key
        assert all(v == v for v in values), key  # not NaN
    candidates = [v for v, _ in trainer.storage.history("ttd/candidates_per_caption").values()]
    assert all(v > 0 for v in candidates)
    for key in ("loss_distill", "loss_tag", "total_loss"):
        assert len(trainer.storage.history(key).values()) == cfg.SOLVER.MAX_ITER, key


def test_lora_checkpoints_written(trained):
    trainer, cfg, _ = trained
    out = Path(cfg.OUTPUT_DIR)
    lora_final, full_final = out / "model_lora_final.pth", out / "model_final.pth"
    assert lora_final.is_file() and full_final.is_file()
    assert (out / "model_lora_0000001.pth").is_file()  # CHECKPOINT_PERIOD 2, beside model_0000001.pth
    assert (out / "model_0000001.pth").is_file()
    assert not list(out.glob("*.tmp"))
    assert lora_final.stat().st_size * 10 < full_final.stat().st_size
    state = torch.load(lora_final, map_location="cpu", weights_only=True)
    assert set(state) == {"format", "version", "settings", "lora", "masker"}
    assert state["settings"] == {"rank": 8, "alpha": 16.0, "targets": sorted(cfg.MODEL.TTD.LORA.TARGETS),
                                 "towers": ["image", "text"], "image_layers": 2, "arch": "tiny_clip",
                                 "dense_mode": "maskclip"}
    live = lora_state_dict(trainer.model.backbone.clip)
    assert set(state["lora"]) == set(live)
    assert all(torch.equal(state["lora"][k], live[k]) for k in live)
    assert torch.equal(state["masker"]["w"], trainer.model.masker.w.detach())


def test_training_changes_only_lora_and_masker(trained):
    trainer, _, initial = trained
    final = trainer.model.state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], final[k])}
    assert changed, "nothing was trained"
    assert all(".lora_" in k or k in ("masker.w", "masker.b") for k in changed), sorted(changed)
    assert any(".lora_B" in k for k in changed)


def test_test_on_semseg_and_caption_datasets(trained, synthetic):
    trainer, cfg, _ = trained
    cfg = cfg.clone()
    cfg.DATASETS.TEST = (synthetic["semseg"], synthetic["captions"])
    results = TTDTrainer.test(cfg, trainer.model)
    assert set(results) == {synthetic["semseg"], synthetic["captions"]}
    semseg = results[synthetic["semseg"]]
    assert "sem_seg" in semseg and "mIoU" in semseg["sem_seg"]
    assert 0.0 <= semseg["sem_seg"]["mIoU"] <= 100.0
    captions = results[synthetic["captions"]]
    assert "caption_seg" in captions
    for key in ("CaptionIoU", "mFPR", "mFNR"):
        assert key in captions["caption_seg"], key
    assert "tag_selection/s_pixel" in captions and "F1" in captions["tag_selection/s_pixel"]
    assert "zero_shot" in captions and "text_bias" in captions
    assert trainer.model.training  # inference_context restored the mode


def test_build_evaluator_by_type(synthetic, tmp_path):
    cfg = make_tiny_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    assert isinstance(TTDTrainer.build_evaluator(cfg, synthetic["semseg"]), DatasetEvaluators)
    assert isinstance(TTDTrainer.build_evaluator(cfg, synthetic["captions"]), DatasetEvaluators)
    for evaluator_type in ("coco", None):
        name = f"test_trainer_unknown_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: [])
        if evaluator_type:
            MetadataCatalog.get(name).set(evaluator_type=evaluator_type)
        try:
            with pytest.raises(NotImplementedError, match=name):
                TTDTrainer.build_evaluator(cfg, name)
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    with pytest.raises(NotImplementedError):
        TTDTrainer.build_evaluator(cfg, synthetic["train"])  # evaluator_type "none"


def test_caption_mask_threshold_config_reaches_evaluator(synthetic, tmp_path):
    cfg = make_tiny_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD = 0.3
    evaluators = TTDTrainer.build_evaluator(cfg, synthetic["captions"])
    seg = [e for e in evaluators._evaluators if isinstance(e, CaptionSegEvaluator)]
    assert seg and seg[0]._mask_threshold == pytest.approx(0.3)


def test_train_loader_with_default_aspect_ratio_grouping(synthetic, tmp_path):
    cfg = train_cfg(synthetic, tmp_path, **{"DATALOADER.ASPECT_RATIO_GROUPING": True})
    batch = next(iter(TTDTrainer.build_train_loader(cfg)))
    assert len(batch) == 4


def test_train_loader_batches(synthetic, tmp_path):
    cfg = train_cfg(synthetic, tmp_path)
    batch = next(iter(TTDTrainer.build_train_loader(cfg)))
    assert len(batch) == 4
    tokenizer = build_tokenizer(cfg.MODEL.CLIP.ARCH)
    for x in batch:
        assert x["image"].shape == (3, 32, 32) and x["image"].dtype == torch.uint8
        assert isinstance(x["caption"], str) and x["caption"]
        # tokenised in the loader workers, as the model's tokenizer does it
        assert x["caption_tokens"].dtype == torch.int64
        assert torch.equal(x["caption_tokens"], tokenizer([x["caption"]])[0])
    # packed in the workers (ttd_d2.data.collate): the step takes the batch without a copy
    assert stack_field(batch, "image").data_ptr() == batch[0]["image"].data_ptr()


def test_train_loader_per_sample_path(synthetic, tmp_path):
    """DATALOADER.PACKED_BATCHES False: detectron2's own path, the mapper's arrays as they are."""
    cfg = train_cfg(synthetic, tmp_path)
    cfg.DATALOADER.PACKED_BATCHES = False
    batch = next(iter(TTDTrainer.build_train_loader(cfg)))
    assert len(batch) == 4 and all(isinstance(x["image"], np.ndarray) for x in batch)


def test_caption_train_mapper_skips_unreadable_image(synthetic, tmp_path):
    cfg = train_cfg(synthetic, tmp_path)
    mapper = mappers.CaptionTrainMapper(cfg, True)
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    assert mapper({"file_name": str(bad), "caption": "a red circle"}) is None
    assert mapper({"file_name": str(tmp_path / "missing.png"), "caption": "a red circle"}) is None
    good = DatasetCatalog.get(synthetic["train"])[0]
    out = mapper(good)
    assert out["image"].shape == (3, 32, 32) and out["caption"] == good["caption"]
    assert "skipped" not in out  # the mapper skips; the record loader counts (below)
    from ttd_d2.data.records import _CountingMapper

    counting = _CountingMapper(mapper)
    assert counting({"file_name": str(bad), "caption": "x"}) is None
    assert counting({"file_name": str(tmp_path / "missing.png"), "caption": "x"}) is None
    assert counting(good)["skipped"] == {"corrupt_image": 2}  # the next sample carries the count, once
    assert "skipped" not in counting(good)


def test_test_mapper_raises_naming_the_file(synthetic, tmp_path):
    cfg = train_cfg(synthetic, tmp_path)
    mapper = mappers.TestMapper(cfg)
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(OSError, match="garbage.png"):
        mapper({"file_name": str(bad), "height": 32, "width": 32})
    with pytest.raises(OSError, match="missing.png"):
        mapper({"file_name": str(tmp_path / "missing.png")})
    record = DatasetCatalog.get(synthetic["semseg"])[0]
    out = mapper(record)
    assert out["image"].shape == (3, 32, 32) and out["height"] == 32 and "image" not in record


def test_test_loader_short_side_per_dataset(synthetic, tmp_path):
    """MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET resizes the datasets it names, and only them."""
    cfg = train_cfg(synthetic, tmp_path, **{"INPUT.MIN_SIZE_TEST": 32, "MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET":
                                             [[synthetic["semseg"], 48]]})
    semseg = next(iter(TTDTrainer.build_test_loader(cfg, synthetic["semseg"])))[0]
    captions = next(iter(TTDTrainer.build_test_loader(cfg, synthetic["captions"])))[0]
    assert semseg["image"].shape[-2:] == (48, 48) and (semseg["height"], semseg["width"]) == (32, 32)
    assert captions["image"].shape[-2:] == (32, 32)
    assert cfg.INPUT.MIN_SIZE_TEST == 32  # the config itself is left as it was


def test_optimizer_covers_only_trainable_parameters(synthetic, tmp_path):
    cfg = train_cfg(synthetic, tmp_path, **{"SOLVER.WEIGHT_DECAY": 0.05})
    torch.manual_seed(0)
    model = TTDTrainer.build_model(cfg)
    optimizer = TTDTrainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    in_optimizer = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(in_optimizer) == set(trainable)
    assert in_optimizer[id(model.masker.w)] == 0.0 and in_optimizer[id(model.masker.b)] == 0.0
    assert any(wd == 0.05 for wd in in_optimizer.values())
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(TTDTrainer.build_optimizer(cfg, model), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="LAMB"):
        TTDTrainer.build_optimizer(cfg, model)


def test_a_run_that_fails_in_its_last_step_writes_no_final_files(synthetic, tmp_path):
    """detectron2 runs after_train also after an exception: a failed last step must not leave
    a model_lora_final.pth (or detectron2's model_final.pth) that looks like a finished run."""
    trainer = TTDTrainer(train_cfg(synthetic, tmp_path, **{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 100}))
    run_step = trainer.run_step

    def failing_last_step():
        if trainer.iter == trainer.max_iter - 1:
            raise RuntimeError("the data loader broke")
        run_step()

    trainer.run_step = failing_last_step
    with pytest.raises(RuntimeError, match="the data loader broke"):
        trainer.train()
    assert not (tmp_path / "model_lora_final.pth").exists() and not (tmp_path / "model_final.pth").exists()


def test_contrastive_run_then_export(synthetic, tmp_path):
    """The documented pipeline: contrastive (pre)training with the trainer, then
    tools/export_clip.py, then MODEL.CLIP.PRETRAINED; a TTD run's checkpoint is refused."""
    from ttd_d2.engine import TTDHook

    cfg = train_cfg(synthetic, tmp_path, **{"MODEL.TTD.ENABLED": False, "MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0,
                                             "SOLVER.MAX_ITER": 1})
    trainer = TTDTrainer(cfg)
    assert not any(isinstance(h, TTDHook) for h in trainer._hooks)
    trainer.train()
    assert len(trainer.storage.history("total_loss").values()) == 1 and not (tmp_path / "model_lora_final.pth").exists()

    export_clip = load_script("tools/export_clip.py")
    dst = tmp_path / "exported.pt"
    export_clip.export(str(tmp_path / "model_final.pth"), str(dst))
    cfg2 = make_tiny_cfg()
    cfg2.MODEL.CLIP.PRETRAINED = str(dst)
    torch.manual_seed(1)
    loaded = TTDTrainer.build_model(cfg2).eval()
    model = trainer.model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.backbone(x)["dense"], model.backbone(x)["dense"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("shape", [(48, 96), (96, 40)])
def test_caption_train_mapper_non_square_image_gives_square_crop(synthetic, tmp_path, shape):
    import cv2
    import numpy as np

    cfg = train_cfg(synthetic, tmp_path)
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8))
    out = mappers.CaptionTrainMapper(cfg, True)({"file_name": str(path), "caption": "a red circle"})
    assert out["image"].shape == (3, 32, 32)


def test_export_refuses_ttd_run_checkpoint(trained):

    _, cfg, _ = trained
    export_clip = load_script("tools/export_clip.py")
    with pytest.raises(ValueError, match="LoRA"):
        export_clip.export(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), os.path.join(cfg.OUTPUT_DIR, "x.pt"))
