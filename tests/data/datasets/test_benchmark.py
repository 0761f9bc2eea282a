"""Registration and class-name files of the real benchmarks (ttd_d2/data/datasets/benchmark.py)."""
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ttd_d2.data.datasets.benchmark import CLASS_NAMES_DIR, read_class_names
from ttd_d2.data.datasets.real import REAL_BENCHMARKS

from real_fixtures import d2_root, register  # noqa: F401  (fixture)

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
