"""TCL trained with its own objective through the real trainer on CPU (tiny CLIP, 32 px): the
losses of every step, what trains, the decoder-only warm-up (the copied block still during it,
trained after it; SGD and AdamW with weight decay), the trained TCL in the authors' format,
and configs/synthetic/pretrain_tcl.yaml through tools/train_net.py."""
import json
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase, default_argument_parser
from detectron2.modeling import build_model

from conftest import REPO, load_script, make_tiny_train_cfg
from ttd_d2.data.datasets.synthetic import register_synthetic
from ttd_d2.data.synthetic.writer import generate
from ttd_d2.engine import TTDTrainer

TCL_LOSSES = ("loss_tcl_image", "loss_tcl_feature", "loss_tcl_area", "loss_tcl_neg_area", "loss_tcl_tv_image",
              "loss_tcl_tv_mask")
TCL_OBJECTIVE = {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TCL.LOSS.CONTRASTIVE_WEIGHT": 0.1,
                 "MODEL.TCL.LOSS.AREA_WEIGHT": 0.4, "MODEL.TCL.LOSS.TV_WEIGHT": 1.0}
BLOCK = "backbone.clip.visual.tcl_head.block."


@pytest.fixture(scope="module")
def image_text(tmp_path_factory):
    """{"32": a 32 px image-text split, "64": a 64 px one (the synthetic benchmark's size)}."""
    root = tmp_path_factory.mktemp("synthetic")
    tag = uuid.uuid4().hex[:8]
    names = {}
    for size in (32, 64):
        generate(root, "image_text", f"tcl{size}{tag}", 8, size, image_size=size)
        names[str(size)] = f"synth_image_text_tcl{size}{tag}"
    register_synthetic(root)
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


class Snapshot(HookBase):
    """The trainable parameters after ``after`` steps."""

    def __init__(self, after: int):
        self.after, self.state = after, None

    def after_step(self):
        if self.trainer.iter + 1 == self.after:
            self.state = trainable(self.trainer.model)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(dataset, output_dir, snapshot_after=0, **opts):
    cfg = make_tiny_train_cfg(dataset, output_dir, **{**TCL_OBJECTIVE, "SOLVER.CHECKPOINT_PERIOD": 1000, **opts})
    torch.manual_seed(0)
    trainer = TTDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    snapshot = Snapshot(snapshot_after)
    trainer.register_hooks([snapshot])
    initial = trainable(trainer.model)
    trainer.train()
    return trainer, initial, snapshot.state


def test_tcl_trains_its_head_and_masker_with_its_objective(image_text, tmp_path):
    trainer, initial, _ = train(image_text["32"], tmp_path, **{"SOLVER.WEIGHT_DECAY": 0.0})
    for key in TCL_LOSSES:
        values = [v for v, _ in trainer.storage.history(key).values()]
        assert len(values) == 3 and all(torch.isfinite(torch.tensor(values))), key
    names = set(initial)
    assert names == {n for n, _ in trainer.model.named_parameters()
                     if n.startswith(("backbone.clip.visual.tcl_head.", "backbone.objective.", "masker."))}
    assert {"masker.w", "masker.b", "backbone.objective.image_temperature.logit_scale",
            "backbone.objective.feature_temperature.logit_scale"} <= names
    final = trainable(trainer.model)
    unchanged = [n for n in names if torch.equal(initial[n], final[n])]
    assert not unchanged, unchanged


@pytest.mark.parametrize("optimizer", ["ADAMW", "SGD"])
@pytest.mark.parametrize("warmup", [2, 0])
def test_decoder_only_warmup_holds_the_copied_block_still(image_text, tmp_path, optimizer, warmup):
    trainer, initial, during = train(image_text["32"], tmp_path, snapshot_after=2, **{
        "SOLVER.MAX_ITER": 4, "MODEL.TCL.DECODER_ONLY_ITERS": warmup, "SOLVER.OPTIMIZER": optimizer,
        "SOLVER.WEIGHT_DECAY": 0.05})  # decay too must wait for the end of the warm-up
    final = trainable(trainer.model)
    block = [n for n in initial if n.startswith(BLOCK)]
    assert len(block) == 12
    moved_during = [n for n in block if not torch.equal(initial[n], during[n])]
    assert moved_during == ([] if warmup else block)
    others_still = [n for n in initial if n not in block and torch.equal(initial[n], during[n])]
    if optimizer == "ADAMW":  # every other trainable weight: decoder, ln_post / proj copies, masker, temperatures
        assert not others_still, others_still
    else:  # SGD moves the decoder's norms by less than float32 resolves in two steps (gates start at 0)
        first_order = ("masker.", "backbone.objective.", "tcl_head.ln_post.", "tcl_head.proj", ".gate", ".conv.")
        assert not [n for n in others_still if any(k in n for k in first_order)], others_still
    assert not [n for n in block if torch.equal(during[n], final[n])]  # trained after the warm-up


def test_pretrain_tcl_synthetic_config_runs_through_train_net(image_text, tmp_path):
    train_net = load_script("tools/train_net.py")
    args = default_argument_parser().parse_args([
        "--config-file", str(REPO / "configs" / "synthetic" / "pretrain_tcl.yaml"),
        "MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", str(REPO / "checkpoints" / "tiny_clip_synthetic.pt"),
        "DATASETS.TRAIN", f"('{image_text['64']}',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
        "MODEL.TCL.DECODER_ONLY_ITERS", "1", "OUTPUT_DIR", str(tmp_path),
    ])
    train_net.main(args)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    last = metrics[-1]
    assert last["iteration"] == 2
    assert all(key in last and torch.isfinite(torch.tensor(last[key])) for key in TCL_LOSSES), last
    assert (tmp_path / "model_final.pth").is_file() and (tmp_path / "model_tcl_final.pth").is_file()


def test_the_trained_tcl_is_written_in_the_authors_format_and_loads_as_tcl_weights(image_text, tmp_path):
    trainer, _, _ = train(image_text["32"], tmp_path, **{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1})
    assert (tmp_path / "model_tcl_0000000.pth").is_file() and not list(tmp_path.glob("*.tmp"))
    path = tmp_path / "model_tcl_final.pth"
    content = torch.load(path, map_location="cpu", weights_only=True)
    assert content["step"] == 2
    objective = trainer.model.backbone.objective
    assert torch.equal(content["model"]["tcli_loss.logit_scale"], objective.image_temperature.logit_scale.detach())
    assert torch.equal(content["model"]["tclf_loss.logit_scale"], objective.feature_temperature.logit_scale.detach())
    cfg = make_tiny_train_cfg(image_text["32"], tmp_path, **{"MODEL.BACKBONE.NAME": "TCL",
                                                              "MODEL.TCL.WEIGHTS": str(path)})
    torch.manual_seed(0)  # the same frozen CLIP
    zero_shot = build_model(cfg).eval()
    trained = trainer.model.eval()
    assert torch.equal(zero_shot.masker.w, trained.masker.w) and torch.equal(zero_shot.masker.b, trained.masker.b)
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        assert torch.allclose(zero_shot.backbone(x)["dense"], trained.backbone(x)["dense"], atol=1e-6)
