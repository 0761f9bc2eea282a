"""Fixtures of the real-benchmark tests: a temporary ``$DETECTRON2_DATASETS`` with the real
benchmarks registered there (restored afterwards), image writing, and ``tools/train_net.py
--eval-only`` on the tiny model."""
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.engine import default_argument_parser
from PIL import Image

from conftest import TINY_ARCH, load_script
from ttd_d2.data.datasets.real import register_real_benchmarks

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def d2_root(tmp_path, monkeypatch):
    """An empty datasets root set as ``$DETECTRON2_DATASETS``; the benchmarks are registered
    there by :func:`register` and re-registered at the default root afterwards."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    register_real_benchmarks()


def register(root):
    return register_real_benchmarks(root)


def write_jpg(path, size=32, seed=0):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def write_png(path, array, palette=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(palette.flatten().tolist())
    image.save(path)


def eval_only(datasets, output_dir):
    """Results ``{dataset: {"sem_seg": ...}}`` of ``tools/train_net.py --eval-only`` (MaskCLIP
    config, tiny CLIP, 32 px); detectron2 unwraps a single dataset's results: wrapped again."""
    train_net = load_script("tools/train_net.py")
    args = default_argument_parser().parse_args([
        "--config-file", str(REPO / "configs" / "synthetic" / "maskclip.yaml"), "--eval-only",
        "MODEL.DEVICE", "cpu", "MODEL.CLIP.ARCH", TINY_ARCH, "MODEL.CLIP.PRETRAINED", "",
        "DATASETS.TEST", str(tuple(datasets)), "INPUT.MIN_SIZE_TEST", "32", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(output_dir)])
    torch.manual_seed(0)
    results = train_net.main(args)
    return {datasets[0]: results} if len(datasets) == 1 else results
