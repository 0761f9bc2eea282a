"""LoRA files through the tools: ``tools/train_net.py --eval-only`` with
``MODEL.TTD.LORA.WEIGHTS`` on a zero-shot config equals the TTD config with the same file;
a LoRA file given as ``MODEL.WEIGHTS`` and ``MERGE_FOR_INFERENCE`` in training are refused."""
import uuid
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.testing import flatten_results_dict

from conftest import load_script, make_tiny_train_cfg
from ttd_d2.data.datasets.synthetic import register_synthetic
from ttd_d2.data.synthetic.writer import generate
from ttd_d2.engine import TTDTrainer



@pytest.fixture(scope="module")
def train_net():
    return load_script("tools/train_net.py")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    tag = uuid.uuid4().hex[:8]
    generate(root, "image_text", f"tr{tag}", 8, 0, image_size=32)
    generate(root, "captions", f"te{tag}", 4, 100, image_size=32)
    register_synthetic(root)
    names = {"train": f"synth_image_text_tr{tag}", "captions": f"synth_captions_te{tag}"}
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def zero_shot_cfg(datasets, output_dir, **opts):
    """configs/synthetic/clearclip.yaml on the tiny CLIP: TTD off, a caption test set."""
    return make_tiny_train_cfg(datasets["train"], output_dir, (datasets["captions"],), **{
        "MODEL.CLIP.DENSE_MODE": "clearclip", "SOLVER.BASE_LR": 5e-2, **opts})


def ttd_cfg(datasets, output_dir, **opts):
    """configs/synthetic/ttd_clearclip.yaml on the tiny CLIP."""
    return zero_shot_cfg(datasets, output_dir, **{"MODEL.TTD.ENABLED": True, **opts})


@pytest.fixture(scope="module")
def lora_file(datasets, tmp_path_factory):
    """model_lora_final.pth of a real 3-iteration TTD run (clearclip, frozen teacher)."""
    out = tmp_path_factory.mktemp("ttd_clearclip")
    torch.manual_seed(0)
    trainer = TTDTrainer(ttd_cfg(datasets, out, **{"DATASETS.TEST": ()}))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return str(out / "model_lora_final.pth")


def caption_outputs(model, datasets):
    from ttd_d2.data.mappers import TestMapper

    mapper = TestMapper(zero_shot_cfg(datasets, "."))
    inputs = [mapper(r) for r in DatasetCatalog.get(datasets["captions"])]
    with torch.no_grad():
        return model.eval()(inputs)


def test_eval_only_zero_shot_config_with_lora_file_equals_ttd_config(train_net, datasets, lora_file, tmp_path):
    torch.manual_seed(1)  # the base weights come from MODEL.CLIP.PRETRAINED in real configs: the same seed here
    zero_shot = train_net.build_eval_model(zero_shot_cfg(datasets, tmp_path, **{"MODEL.TTD.LORA.WEIGHTS": lora_file}))
    torch.manual_seed(1)
    ttd = train_net.build_eval_model(ttd_cfg(datasets, tmp_path, **{"MODEL.TTD.LORA.WEIGHTS": lora_file}))
    torch.manual_seed(1)
    base = train_net.build_eval_model(zero_shot_cfg(datasets, tmp_path))
    got, expected, before = (caption_outputs(m, datasets) for m in (zero_shot, ttd, base))
    for g, e, b in zip(got, expected, before):
        assert torch.equal(g["caption_mask"], e["caption_mask"])
        assert all(torch.equal(g["tag_scores"][k], e["tag_scores"][k]) for k in e["tag_scores"])
        assert not torch.allclose(g["caption_mask"], b["caption_mask"], atol=1e-4)
    results = [TTDTrainer.test(cfg, m) for cfg, m in ((zero_shot_cfg(datasets, tmp_path), zero_shot),
                                                      (ttd_cfg(datasets, tmp_path), ttd))]
    assert results[0] and flatten_results_dict(results[0]) == pytest.approx(
        flatten_results_dict(results[1]), nan_ok=True, rel=0, abs=0)


def test_lora_file_as_model_weights_is_refused(train_net, datasets, lora_file, tmp_path):
    message = f"MODEL.WEIGHTS '{lora_file}' is a LoRA file.*MODEL.TTD.LORA.WEIGHTS {lora_file}"
    with pytest.raises(ValueError, match=message):
        train_net.build_eval_model(zero_shot_cfg(datasets, tmp_path, **{"MODEL.WEIGHTS": lora_file}))
    trainer = TTDTrainer(ttd_cfg(datasets, tmp_path, **{"MODEL.WEIGHTS": lora_file}))
    with pytest.raises(ValueError, match=message):
        trainer.resume_or_load(resume=False)


def test_full_checkpoint_as_model_weights_still_loads(train_net, datasets, lora_file, tmp_path):
    full = str(Path(lora_file).parent / "model_final.pth")
    model = train_net.build_eval_model(ttd_cfg(datasets, tmp_path, **{"MODEL.WEIGHTS": full}))
    state = torch.load(full, weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if ".lora_" in k)


def test_merge_for_inference_is_refused_in_training(datasets, tmp_path):
    with pytest.raises(ValueError, match="MERGE_FOR_INFERENCE = True.*is for evaluation"):
        TTDTrainer(ttd_cfg(datasets, tmp_path, **{"MODEL.TTD.LORA.MERGE_FOR_INFERENCE": True}))
