"""``tools/train_net.py --eval-only`` on the TCL configs (tiny CLIP, tiny generated splits): the
shipped synthetic config evaluates sem-seg and caption datasets, with a TCL checkpoint in the
authors' format as MODEL.TCL.WEIGHTS."""
import uuid
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser

from conftest import TINY_ARCH, load_script
from ttd_d2.data.datasets.synthetic import register_synthetic
from ttd_d2.data.synthetic.writer import generate
from ttd_d2.modeling.backbone.tcl_checkpoint import tcl_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    tag = uuid.uuid4().hex[:8]
    generate(root, "semseg", f"te{tag}", 2, 100, image_size=32)
    generate(root, "captions", f"te{tag}", 2, 100, image_size=32)
    register_synthetic(root)
    names = (f"synth_semseg_te{tag}", f"synth_captions_te{tag}")
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def eval_only(config, datasets, output_dir, *opts):
    train_net = load_script("tools/train_net.py")
    args = default_argument_parser().parse_args([
        "--config-file", str(ROOT / "configs" / config), "--eval-only",
        "MODEL.DEVICE", "cpu", "MODEL.CLIP.ARCH", TINY_ARCH, "MODEL.CLIP.PRETRAINED", "",
        "DATASETS.TEST", str(tuple(datasets)), "INPUT.MIN_SIZE_TEST", "32", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(output_dir), "MODEL.TCL.WEIGHTS", "", *opts])
    torch.manual_seed(0)
    return train_net.main(args)


def test_eval_only_on_the_tcl_config(datasets, tmp_path):
    results = eval_only("synthetic/tcl.yaml", datasets, tmp_path)
    assert set(results) == set(datasets)
    assert 0.0 <= results[datasets[0]]["sem_seg"]["mIoU"] <= 100.0
    assert results[datasets[1]]


def test_eval_only_with_a_tcl_checkpoint(datasets, tmp_path):
    """The authors' format as MODEL.TCL.WEIGHTS, through the tool: a head whose gates are open
    segments differently from the MaskCLIP start."""
    from conftest import make_tiny_tcl_head

    head = make_tiny_tcl_head()
    path = tmp_path / "tcl.pth"
    torch.save(tcl_checkpoint(head, {"w": torch.tensor(10.0), "b": torch.tensor(-2.5)}), path)
    before = eval_only("synthetic/tcl.yaml", datasets, tmp_path / "before")
    after = eval_only("synthetic/tcl.yaml", datasets, tmp_path / "after", "MODEL.TCL.WEIGHTS", str(path))
    assert before[datasets[0]]["sem_seg"] != after[datasets[0]]["sem_seg"]
