"""Registration, class-name files and image-label pairing of the real benchmarks
(ttd_d2/data/datasets/benchmark.py)."""
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ttd_d2.data.datasets.benchmark import CLASS_NAMES_DIR, read_class_names
from ttd_d2.data.datasets.cityscapes import prepare_cityscapes
from ttd_d2.data.datasets.coco import prepare_coco
from ttd_d2.data.datasets.real import REAL_BENCHMARKS
from ttd_d2.data.datasets.voc import prepare_voc

from real_fixtures import d2_root, register  # noqa: F401  (fixture)
from test_cityscapes import official_cityscapes
from test_coco import official_coco
from test_voc import BASE as VOC, official_voc

# official class counts; 459 comes from the release (tested in test_pascal_context.py)
PACKAGED_COUNTS = {"ttd_voc21_val": 21, "ttd_voc20_val": 20, "ttd_context59_val": 59, "ttd_context60_val": 60,
                   "ttd_coco_stuff171_val": 171, "ttd_coco_object_val": 81, "ttd_cityscapes19_val": 19,
                   "ttd_ade150_val": 150}


def test_names_never_clash_with_detectron2_builtins():
    names = [b.name for b in REAL_BENCHMARKS]
    assert len(set(names)) == len(names) and all(n.startswith("ttd_") for n in names)


@pytest.mark.parametrize("name, count", sorted(PACKAGED_COUNTS.items()))
def test_metadata_at_import(name, count):
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == count
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
    has_background = meta.stuff_classes[0] == "background"
    assert has_background == (name in ("ttd_voc21_val", "ttd_context60_val", "ttd_coco_object_val"))
    assert (meta.get("background_threshold", None) is not None) == has_background


def test_background_thresholds_are_the_papers():
    assert MetadataCatalog.get("ttd_voc21_val").background_threshold == 0.40
    assert MetadataCatalog.get("ttd_context60_val").background_threshold == 0.45
    assert MetadataCatalog.get("ttd_coco_object_val").background_threshold == 0.45


def test_class_files_are_unique_and_coco_object_is_the_coco_things():
    for path in CLASS_NAMES_DIR.glob("*.txt"):
        names = read_class_names(path)
        assert len(set(names)) == len(names), path
    assert read_class_names(CLASS_NAMES_DIR / "coco_object80.txt") == \
        read_class_names(CLASS_NAMES_DIR / "coco_stuff171.txt")[:80]
    assert read_class_names(CLASS_NAMES_DIR / "voc20.txt")[0].split(", ") == ["aeroplane", "airplane"]


def test_a_missing_dataset_names_the_root_the_folder_and_the_command(d2_root):
    register(d2_root)
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get("ttd_ade150_val")
    message = str(error.value)
    assert "DETECTRON2_DATASETS" in message and str(d2_root / "ADEChallengeData2016") in message
    assert "python tools/prepare_ade20k.py" in message


def _pairs(records):
    return [(Path(r["file_name"]).stem, Path(r["sem_seg_file_name"]).stem) for r in records]


def test_images_pair_with_labels_by_name_and_the_split_list_defines_the_split(d2_root):
    official_voc(d2_root)  # JPEGImages also holds 2007_000001.jpg, a train image
    prepare_voc(d2_root)
    register(d2_root)
    assert _pairs(DatasetCatalog.get("ttd_voc21_val")) == [("2007_000033", "2007_000033"),
                                                            ("2007_000042", "2007_000042")]


@pytest.mark.parametrize("removed, kind", [(f"{VOC}/JPEGImages/2007_000042.jpg", "image"),
                                           (f"{VOC}/ttd_labels/val21/2007_000042.png", "label")])
def test_a_listed_id_without_its_image_or_label_names_the_file_and_the_command(d2_root, removed, kind):
    official_voc(d2_root)
    prepare_voc(d2_root)
    (d2_root / removed).unlink()  # the same number of images and labels is left: never paired by position
    register(d2_root)
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get("ttd_voc21_val")
    message = str(error.value)
    assert f"{kind} files missing for 1 of the 2 ids listed in {d2_root / VOC}/ImageSets/Segmentation/val.txt" in message
    assert str(d2_root / removed) in message and "python tools/prepare_voc.py" in message


@pytest.mark.parametrize("official, prepare, removed, name, command", [
    # flat folders without a split list (COCO), and nested ones (Cityscapes)
    (official_coco, prepare_coco, "coco/ttd_labels/stuff171_val2017/000000000285.png", "ttd_coco_stuff171_val",
     "prepare_coco.py"),
    (official_cityscapes, prepare_cityscapes, "cityscapes/ttd_labels/val19/lindau/lindau_000000_000019.png",
     "ttd_cityscapes19_val", "prepare_cityscapes.py"),
])
def test_without_a_split_list_every_image_needs_its_label(d2_root, official, prepare, removed, name, command):
    official(d2_root)
    prepare(d2_root)
    (d2_root / removed).unlink()
    register(d2_root)
    with pytest.raises(FileNotFoundError, match=f"label files missing for 1 of the 2 images .*{removed}.*"
                       f"python tools/{command}"):
        DatasetCatalog.get(name)


@pytest.mark.parametrize("folder", [f"{VOC}/JPEGImages", f"{VOC}/ttd_labels/val21"])
def test_an_empty_folder_names_the_folder_and_the_command(d2_root, folder):
    official_voc(d2_root)
    prepare_voc(d2_root)
    for path in (d2_root / folder).iterdir():
        path.unlink()
    register(d2_root)
    with pytest.raises(FileNotFoundError, match=f"{d2_root / folder} is empty.*python tools/prepare_voc.py"):
        DatasetCatalog.get("ttd_voc21_val")


def test_a_missing_split_list_is_named(d2_root):
    official_voc(d2_root)
    prepare_voc(d2_root)
    (d2_root / VOC / "ImageSets/Segmentation/val.txt").unlink()
    register(d2_root)
    with pytest.raises(FileNotFoundError, match="split list .*val.txt is missing.*python tools/prepare_voc.py"):
        DatasetCatalog.get("ttd_voc20_val")
