"""COCO-Stuff-164k stuffthingmaps -> 171-class and COCO-Object (81) labels, loaded and evaluated."""
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ttd_d2.data.datasets.coco import COCO_STUFF_IDS, COCO_THING_IDS, prepare_coco

from real_fixtures import d2_root, eval_only, register, write_jpg, write_png  # noqa: F401  (fixture)

# stuffthingmaps value (category id - 1) -> (171-class label, 81-class label), by hand
CASES = {0: (0, 1),        # person, the first thing
         12: (11, 12),     # id 13 stop sign: id 12 is unused, so it is the 12th thing
         89: (79, 80),     # id 90 toothbrush, the last thing
         91: (80, 0),      # id 92 banner, the first stuff -> background
         181: (170, 0),    # id 182 wood, the last stuff
         255: (255, 255)}  # unlabeled


def official_coco(root):
    values = np.array(list(CASES), np.uint8).reshape(2, 3).repeat(16, 0).repeat(11, 1)[:, :32]
    for seed, image_id in enumerate(("000000000139", "000000000285")):
        write_jpg(root / "coco/val2017" / f"{image_id}.jpg", seed=seed)
        write_png(root / "coco/stuffthingmaps_trainval2017/val2017" / f"{image_id}.png", values)
    return values


def test_id_lists_have_the_official_counts():
    assert (len(COCO_THING_IDS), len(COCO_STUFF_IDS)) == (80, 91)


def test_prepare_maps_ids_to_171_and_81_classes(d2_root):
    values = official_coco(d2_root)
    assert prepare_coco(d2_root)["stuff171_val2017"] == {"written": 2, "skipped": 0}
    out171 = np.array(Image.open(d2_root / "coco/ttd_labels/stuff171_val2017/000000000139.png"))
    out81 = np.array(Image.open(d2_root / "coco/ttd_labels/object81_val2017/000000000139.png"))
    for value, (label171, label81) in CASES.items():
        assert set(out171[values == value]) == {label171} and set(out81[values == value]) == {label81}
    assert prepare_coco(d2_root)["object81_val2017"] == {"written": 0, "skipped": 2}


def test_load_and_evaluate(d2_root, tmp_path):
    official_coco(d2_root)
    prepare_coco(d2_root)
    register(d2_root)
    assert len(DatasetCatalog.get("ttd_coco_stuff171_val")) == 2
    stuff = MetadataCatalog.get("ttd_coco_stuff171_val").stuff_classes
    objects = MetadataCatalog.get("ttd_coco_object_val").stuff_classes
    assert (len(stuff), len(objects)) == (171, 81)
    assert (stuff[0], stuff[79], stuff[80], stuff[170]) == ("person", "toothbrush", "banner", "wood")
    assert objects[1:] == stuff[:80] and objects[0] == "background"
    results = eval_only(["ttd_coco_stuff171_val", "ttd_coco_object_val"], tmp_path / "out")
    assert 0.0 <= results["ttd_coco_object_val"]["sem_seg"]["mIoU"] <= 100.0
