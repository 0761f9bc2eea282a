"""PASCAL VOC 2012: official palette PNGs -> 21/20-class labels, loaded and evaluated."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ttd_d2.data.datasets.benchmark import CLASS_NAMES_DIR, read_class_names
from ttd_d2.data.datasets.label_conversion import voc_palette
from ttd_d2.data.datasets.voc import prepare_voc, voc_indices

from real_fixtures import d2_root, eval_only, register, write_jpg, write_png  # noqa: F401  (fixture)

BASE = "VOCdevkit/VOC2012"


def official_voc(root, ids=("2007_000033", "2007_000042")):
    """Images, palette labels (background 0, classes, 255 boundary) and the val list."""
    labels = {}
    for seed, image_id in enumerate(ids):
        label = np.zeros((32, 32), np.uint8)
        label[4:20, 4:20] = 15 + seed  # person / potted plant
        label[20:28, 8:30] = 1
        label[3, :] = 255
        write_jpg(root / BASE / "JPEGImages" / f"{image_id}.jpg", seed=seed)
        image = Image.fromarray(label, mode="P")
        image.putpalette(voc_palette().flatten().tolist())
        (root / BASE / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        image.save(root / BASE / "SegmentationClass" / f"{image_id}.png")
        labels[image_id] = label
    write_jpg(root / BASE / "JPEGImages" / "2007_000001.jpg")  # a train image: not in val
    (root / BASE / "ImageSets/Segmentation").mkdir(parents=True)
    (root / BASE / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in ids))
    return labels


def test_prepare_writes_21_and_20_class_labels_and_is_idempotent(d2_root):
    labels = official_voc(d2_root)
    assert prepare_voc(d2_root) == {"val21": {"written": 2, "skipped": 0}, "val20": {"written": 2, "skipped": 0}}
    for image_id, label in labels.items():
        out21 = np.array(Image.open(d2_root / BASE / "ttd_labels/val21" / f"{image_id}.png"))
        out20 = np.array(Image.open(d2_root / BASE / "ttd_labels/val20" / f"{image_id}.png"))
        np.testing.assert_array_equal(out21, label)
        expected20 = np.where((label == 0) | (label == 255), 255, label.astype(int) - 1)
        np.testing.assert_array_equal(out20, expected20)
    assert prepare_voc(d2_root) == {"val21": {"written": 0, "skipped": 2}, "val20": {"written": 0, "skipped": 2}}
    assert not list(d2_root.rglob("*.tmp.png"))


def test_rgb_rendered_labels_map_back_through_the_palette(tmp_path):
    label = np.array([[0, 1, 20], [255, 7, 0]], np.uint8)
    write_png(tmp_path / "rgb.png", voc_palette()[label])
    np.testing.assert_array_equal(voc_indices(tmp_path / "rgb.png"), label)


def test_a_wrong_layout_names_the_expected_path(d2_root):
    with pytest.raises(FileNotFoundError, match="ImageSets/Segmentation/val.txt"):
        prepare_voc(d2_root)


def test_load_and_evaluate(d2_root, tmp_path):
    official_voc(d2_root)
    prepare_voc(d2_root)
    register(d2_root)
    records = DatasetCatalog.get("ttd_voc21_val")
    assert len(records) == 2 and all(r["dataset_name"] == "ttd_voc21_val" for r in records)
    classes = MetadataCatalog.get("ttd_voc21_val").stuff_classes
    assert classes == ["background", *read_class_names(CLASS_NAMES_DIR / "voc20.txt")] and len(classes) == 21
    assert len(MetadataCatalog.get("ttd_voc20_val").stuff_classes) == 20
    results = eval_only(["ttd_voc21_val", "ttd_voc20_val"], tmp_path / "out")
    for name in ("ttd_voc21_val", "ttd_voc20_val"):
        assert 0.0 <= results[name]["sem_seg"]["mIoU"] <= 100.0


def test_the_evaluator_refuses_a_prepared_label_outside_the_classes(d2_root):
    import torch

    from ttd_d2.evaluation import SemSegRatesEvaluator

    labels = official_voc(d2_root)
    prepare_voc(d2_root)
    register(d2_root)
    bad = d2_root / BASE / "ttd_labels/val21/2007_000042.png"
    write_png(bad, np.where(labels["2007_000042"] == 1, 77, labels["2007_000042"]).astype(np.uint8))
    evaluator = SemSegRatesEvaluator("ttd_voc21_val", distributed=False)
    evaluator.reset()
    image = str(d2_root / BASE / "JPEGImages/2007_000042.jpg")
    with pytest.raises(OSError, match=f"label file {bad} holds values \\[77\\] .* 21 classes .* "
                                      "re-run `python tools/prepare_voc.py`"):
        evaluator.process([{"file_name": image, "height": 32, "width": 32}], [{"sem_seg": torch.zeros(21, 32, 32)}])
