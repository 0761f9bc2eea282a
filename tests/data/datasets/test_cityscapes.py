"""Cityscapes gtFine labelIds -> 19 train ids, nested city folders, loaded and evaluated."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ttd_d2.data.datasets.cityscapes import prepare_cityscapes

from real_fixtures import d2_root, eval_only, register, write_jpg, write_png  # noqa: F401  (fixture)

FRAMES = (("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019"))


def official_cityscapes(root):
    label = np.zeros((32, 64), np.uint8)  # 0 unlabeled
    label[:, 8:16], label[:, 16:24], label[:, 24:32], label[:, 32:40] = 7, 24, 33, 4  # road, person, bicycle, static
    for seed, (city, stem) in enumerate(FRAMES):
        image = root / "cityscapes/leftImg8bit/val" / city / f"{stem}_leftImg8bit.png"
        write_jpg(image.with_suffix(".jpg"), seed=seed)
        Image.open(image.with_suffix(".jpg")).resize((64, 32)).save(image)
        image.with_suffix(".jpg").unlink()
        write_png(root / "cityscapes/gtFine/val" / city / f"{stem}_gtFine_labelIds.png", label)
    return label


def test_prepare_writes_train_ids(d2_root):
    official_cityscapes(d2_root)
    assert prepare_cityscapes(d2_root) == {"written": 2, "skipped": 0}
    out = np.array(Image.open(d2_root / "cityscapes/ttd_labels/val19/lindau/lindau_000000_000019.png"))
    assert (out[0, 0], out[0, 8], out[0, 16], out[0, 24], out[0, 32]) == (255, 0, 11, 18, 255)
    assert prepare_cityscapes(d2_root) == {"written": 0, "skipped": 2}


def test_a_wrong_layout_names_the_expected_path(d2_root):
    with pytest.raises(FileNotFoundError, match="gtFine/val"):
        prepare_cityscapes(d2_root)


def test_load_and_evaluate(d2_root, tmp_path):
    official_cityscapes(d2_root)
    prepare_cityscapes(d2_root)
    register(d2_root)
    records = DatasetCatalog.get("ttd_cityscapes19_val")
    assert [r["file_name"].endswith("_leftImg8bit.png") for r in records] == [True, True]
    classes = MetadataCatalog.get("ttd_cityscapes19_val").stuff_classes
    assert len(classes) == 19 and (classes[0], classes[11], classes[18]) == ("road", "person", "bicycle")
    results = eval_only(["ttd_cityscapes19_val"], tmp_path / "out")
    assert 0.0 <= results["ttd_cityscapes19_val"]["sem_seg"]["mIoU"] <= 100.0
