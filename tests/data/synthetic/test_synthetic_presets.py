"""ttd_d2.data.synthetic.presets.ensure_splits: missing splits are drawn at the size asked for
(the quickstart passes its base config's INPUT.TRAIN_SIZE), finished ones are left alone, and a
root drawn at another size is refused with the fix before anything is written."""
import json

import cv2
import pytest

from ttd_d2.data.synthetic.presets import SplitSpec, ensure_splits


def test_splits_are_drawn_at_the_size_asked_for_and_sizes_never_mix(tmp_path):
    root = tmp_path / "synthetic"
    val, test = SplitSpec("semseg", "val", 1, 2), SplitSpec("captions", "test", 100, 2)
    ensure_splits(root, [val], 32)
    folder = root / "semseg" / "val"
    assert json.loads((folder / "meta.json").read_text())["image_size"] == 32
    images = sorted((folder / "images").glob("*.png"))
    assert len(images) == 2 and all(cv2.imread(str(p)).shape[:2] == (32, 32) for p in images)
    stamp = (folder / "meta.json").stat().st_mtime_ns
    ensure_splits(root, [val], 32)  # complete at this size: left alone
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="drawn at 32 px, the base model reads 64 px.*DETECTRON2_DATASETS"):
        ensure_splits(root, [test, val], 64)  # the 64 px benchmark needs its own root
    assert (folder / "meta.json").stat().st_mtime_ns == stamp and not (root / "captions").exists()  # nothing written


def test_the_benchmark_size_is_the_one_its_configs_read():
    """tools/generate_synthetic.py draws BENCHMARK_IMAGE_SIZE by default; the synthetic configs
    (and the shipped tiny CLIP's architecture) must read the same size."""
    from pathlib import Path

    from detectron2.config import get_cfg

    from ttd_d2 import add_ttd_config
    from ttd_d2.data.synthetic.presets import BENCHMARK_IMAGE_SIZE
    from ttd_d2.modeling.backbone.clip_loading import vision_config

    root = Path(__file__).resolve().parents[3]
    for name in ("tcl.yaml", "ttd_tcl.yaml", "clearclip.yaml", "pretrain_tiny_clip.yaml", "pretrain_tcl.yaml"):
        cfg = get_cfg()
        add_ttd_config(cfg)
        cfg.merge_from_file(str(root / "configs" / "synthetic" / name))
        assert cfg.INPUT.TRAIN_SIZE == cfg.INPUT.MIN_SIZE_TEST == BENCHMARK_IMAGE_SIZE, name
        assert vision_config(cfg.MODEL.CLIP.ARCH)["image_size"] == BENCHMARK_IMAGE_SIZE, name
