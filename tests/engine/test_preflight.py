"""ttd_d2/engine/preflight.py: every invalid value, missing weight file and dataset of a config is
listed at once, each with its key and its fix, before anything is built; tools/train_net.py
stops on it."""
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import REPO, load_script, make_tiny_cfg
from ttd_d2.data.datasets.benchmark import Benchmark, register_benchmark
from ttd_d2.engine.preflight import check_inputs, config_problems, missing_inputs


@pytest.fixture
def missing_benchmark(tmp_path):
    name = "ttd_test_preflight_missing"
    register_benchmark(Benchmark(name, "images/val", "labels/val", "voc20.txt", "python tools/prepare_voc.py"), tmp_path)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_a_complete_config_has_nothing_missing():
    cfg = make_tiny_cfg()  # random CLIP (PRETRAINED ''), no weight files, no datasets
    assert missing_inputs(cfg, training=True) == []
    check_inputs(cfg, training=False)  # (training: nothing to train in this config, test below)


def test_every_missing_input_is_listed_with_its_key_and_fix(tmp_path, missing_benchmark):
    cfg = make_tiny_cfg()
    cfg.MODEL.CLIP.PRETRAINED = str(tmp_path / "clip.pt")
    cfg.MODEL.BACKBONE.NAME = "TCL"
    cfg.MODEL.TCL.WEIGHTS = str(tmp_path / "tcl.pth")
    cfg.MODEL.TTD.LORA.WEIGHTS = str(tmp_path / "lora.pth")
    cfg.DATASETS.TRAIN = ("cc3m_not_registered",)
    cfg.DATASETS.TEST = (missing_benchmark,)
    problems = missing_inputs(cfg, training=True)
    assert len(problems) == 6, problems  # CLIP, TCL, LoRA, the unregistered name, the benchmark's two folders
    assert "MODEL.CLIP.PRETRAINED" in problems[0] and "clip.pt" in problems[0]
    assert problems[1].startswith("MODEL.TCL.WEIGHTS") and "docs/BACKBONES.md" in problems[1]
    assert problems[2].startswith("MODEL.TTD.LORA.WEIGHTS")
    assert problems[3].startswith("DATASETS.TRAIN: dataset 'cc3m_not_registered' is not registered")
    assert all(p.startswith(f"DATASETS.TEST: dataset '{missing_benchmark}'") and "python tools/prepare_voc.py" in p
               for p in problems[4:])
    assert missing_inputs(cfg, training=False)[3:] == problems[4:]  # evaluation does not need DATASETS.TRAIN
    with pytest.raises(SystemExit, match="Cannot start") as error:
        check_inputs(cfg, training=True)
    assert all(p in str(error.value) for p in problems)


def test_unknown_open_clip_tag_is_named():
    cfg = make_tiny_cfg()
    cfg.MODEL.CLIP.ARCH = "ViT-B-16"
    cfg.MODEL.CLIP.PRETRAINED = "not_a_tag"
    assert any("not_a_tag" in p and "not an open_clip tag" in p for p in missing_inputs(cfg, training=False))


def test_train_net_stops_before_building_the_model(tmp_path):
    """configs/ttd_tcl.yaml on a machine without TCL's checkpoint or CC3M: both named before any
    output is written or a download of the CLIP attempted (the 'openai' tag is only checked to be a known tag)."""
    train_net = load_script("tools/train_net.py")
    from detectron2.engine import default_argument_parser

    args = default_argument_parser().parse_args([
        "--config-file", str(REPO / "configs" / "ttd_tcl.yaml"), "MODEL.TCL.WEIGHTS", "/nonexistent/tcl.pth",
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as error:
        train_net.main(args)
    message = str(error.value)
    assert "MODEL.TCL.WEIGHTS: '/nonexistent/tcl.pth' does not exist" in message
    assert "DATASETS.TRAIN: dataset 'ttd_cc3m_train': image_root" in message and "img2dataset" in message
    assert not (tmp_path / "out").exists()  # nothing half-written: not even detectron2's config and log


@pytest.mark.parametrize("config, training", [("ttd_maskclip.yaml", True), ("maskclip.yaml", False)])
def test_the_real_use_configs_name_every_missing_dataset(tmp_path, config, training):
    """The design card's commands on a machine without the data: configs/ttd_maskclip.yaml (training
    on CC3M + CC12M, evaluating Table 3) and configs/maskclip.yaml --eval-only stop at once, naming
    each dataset with its key and its fix ('openai' is a known open_clip tag: not a problem)."""
    train_net = load_script("tools/train_net.py")
    from detectron2.engine import default_argument_parser

    argv = ["--config-file", str(REPO / "configs" / config), "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")]
    args = default_argument_parser().parse_args((["--eval-only"] if not training else []) + argv)
    with pytest.raises(SystemExit) as error:
        train_net.main(args)
    message = str(error.value)
    for name in ("ttd_voc21_val", "ttd_context60_val", "ttd_coco_object_val", "ttd_coco_stuff171_val",
                 "ttd_cityscapes19_val", "ttd_ade150_val"):
        assert f"DATASETS.TEST: dataset '{name}'" in message and "run `python tools/prepare_" in message
    for name in ("ttd_cc3m_train", "ttd_cc12m_train"):  # the shard folders, with img2dataset's command
        assert (f"DATASETS.TRAIN: dataset '{name}': image_root" in message) == training
    assert ("--output_format webdataset" in message) == training
    assert "MODEL.CLIP.PRETRAINED" not in message
    assert not (tmp_path / "out").exists()


def test_shard_patterns_that_match_nothing_are_listed(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    cfg = make_tiny_cfg()
    cfg.DATASETS.IMAGE_TEXT.SHARDS = [str(tmp_path / "{00000..00001}.tar"), str(tmp_path / "cc12m" / "*.tar")]
    problems = missing_inputs(cfg, training=True)
    assert len(problems) == 2, problems
    assert problems[0].startswith("DATASETS.IMAGE_TEXT.SHARDS[0]: 1 shard path(s) match no file") and "00001.tar" in problems[0]
    assert problems[1].startswith("DATASETS.IMAGE_TEXT.SHARDS[1]") and "img2dataset" in problems[1]
    assert missing_inputs(cfg, training=False) == []  # evaluation reads no shard


def test_an_output_dir_that_cannot_take_the_run_stops_it(tmp_path, monkeypatch):
    from ttd_d2.engine import preflight

    cfg = make_tiny_cfg()
    (tmp_path / "afile").write_text("")
    cfg.OUTPUT_DIR = str(tmp_path / "afile")
    with pytest.raises(SystemExit, match="Cannot start: (?s:.*)\n  - OUTPUT_DIR '.*afile': .*afile is not a folder"):
        check_inputs(cfg, training=False)
    cfg.OUTPUT_DIR = str(tmp_path / "new" / "run")
    assert preflight.output_problems(cfg) == []  # created later, inside a writable folder
    from ttd_d2.utils import cli
    monkeypatch.setattr(cli.os, "access", lambda path, mode: str(path) != str(tmp_path))  # (root may write anywhere)
    assert preflight.output_problems(cfg) == [f"OUTPUT_DIR '{cfg.OUTPUT_DIR}': {tmp_path} is not writable: "
                                              "give a folder you can write to"]


def test_invalid_values_are_listed_with_the_missing_inputs(tmp_path):
    """The model's and the trainer's value checks (config_checks) in the same list as the missing
    files, the training ones only for training (--eval-only must not be refused for them)."""
    cfg = make_tiny_cfg()
    cfg.MODEL.TTD.ENABLED, cfg.DATASETS.TRAIN = True, ("synth_image_text_train",)  # a training config
    cfg.MODEL.TTD.LOSS.DISTANCE = "l3"  # a model key: refused by TTD.from_config
    cfg.SOLVER.OPTIMIZER = "adam"  # a training key: refused by TTDTrainer
    cfg.MODEL.TTD.LORA.WEIGHTS = str(tmp_path / "lora.pth")
    problems = config_problems(cfg, training=True)
    assert len(problems) == 2, problems
    assert problems[0] == "MODEL.TTD.LOSS.DISTANCE = 'l3' is unknown: use one of l1, mse, bce"
    assert problems[1].startswith("SOLVER.OPTIMIZER = 'ADAM' is unknown")
    assert config_problems(cfg, training=False) == problems[:1]
    with pytest.raises(SystemExit, match="Cannot start: the config has invalid values") as error:
        check_inputs(cfg, training=True)
    assert all(p in str(error.value) for p in problems) and "MODEL.TTD.LORA.WEIGHTS" in str(error.value)
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # not ttd_d2's model: its keys are not TTD's to check
    assert config_problems(cfg, training=False) == []
