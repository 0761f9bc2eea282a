"""ADE20K SceneParsing annotations (0 other, 1-150) -> 150 classes, loaded and evaluated."""
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ttd_d2.data.datasets.ade20k import prepare_ade20k_150

from real_fixtures import d2_root, eval_only, register, write_jpg, write_png  # noqa: F401  (fixture)

BASE = "ADEChallengeData2016"


def official_ade(root):
    label = np.arange(32 * 32, dtype=np.int64).reshape(32, 32) % 151  # 0 ... 150
    for seed, stem in enumerate(("ADE_val_00000001", "ADE_val_00000002")):
        write_jpg(root / BASE / "images/validation" / f"{stem}.jpg", seed=seed)
        write_png(root / BASE / "annotations/validation" / f"{stem}.png", label.astype(np.uint8))
    return label


def test_prepare_shifts_by_one_and_ignores_other(d2_root):
    label = official_ade(d2_root)
    assert prepare_ade20k_150(d2_root) == {"written": 2, "skipped": 0}
    out = np.array(Image.open(d2_root / BASE / "ttd_labels/validation150/ADE_val_00000001.png"))
    np.testing.assert_array_equal(out, np.where(label == 0, 255, label - 1))
    assert prepare_ade20k_150(d2_root) == {"written": 0, "skipped": 2}


def test_load_and_evaluate(d2_root, tmp_path):
    official_ade(d2_root)
    prepare_ade20k_150(d2_root)
    register(d2_root)
    assert len(DatasetCatalog.get("ttd_ade150_val")) == 2
    classes = MetadataCatalog.get("ttd_ade150_val").stuff_classes
    assert len(classes) == 150 and (classes[0], classes[12], classes[149]) == ("wall", "person, people", "flag")
    results = eval_only(["ttd_ade150_val"], tmp_path / "out")
    assert 0.0 <= results["ttd_ade150_val"]["sem_seg"]["mIoU"] <= 100.0
