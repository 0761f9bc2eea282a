"""PASCAL Context LabelMaps (.mat, 459 classes) -> 459 (16-bit) / 59 / 60 labels, loaded and
evaluated (the 16-bit labels through detectron2's SemSegEvaluator)."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ttd_d2.data.datasets.benchmark import CLASS_NAMES_DIR, read_class_names
from ttd_d2.data.datasets.pascal_context import context_tables, parse_label_list, prepare_pascal_context

from real_fixtures import d2_root, eval_only, register, write_jpg  # noqa: F401  (fixture)

scipy_io = pytest.importorskip("scipy.io")  # the prepare step reads .mat files with scipy
NAMES59 = [n.split(",")[0].replace(" ", "") for n in read_class_names(CLASS_NAMES_DIR / "context59.txt")]
# a 459-name list in the release's format: the 59 names interleaved with 400 others
NAMES459 = sorted(NAMES59 + [f"other{k:03d}" for k in range(400)])


def official_context(root):
    base = root / "pascal_context"
    base.mkdir(parents=True)
    (base / "labels.txt").write_text("".join(f"{k}: {n}\n" for k, n in enumerate(NAMES459, 1)))
    (base / "59_labels.txt").write_text("".join(f"{k}: {n}\n" for k, n in enumerate(NAMES59, 1)))
    ids = ("2008_000002", "2008_000003")
    (base / "val.txt").write_text("\n".join(ids))
    label_map = (np.arange(32 * 32).reshape(32, 32) % 460).astype(np.uint16)  # 0 unlabeled, 1-459
    for seed, image_id in enumerate(ids):
        write_jpg(root / "VOCdevkit/VOC2010/JPEGImages" / f"{image_id}.jpg", seed=seed)
        (base / "trainval").mkdir(exist_ok=True)
        scipy_io.savemat(base / "trainval" / f"{image_id}.mat", {"LabelMap": label_map})
    return label_map


def test_tables_by_hand():
    tables = context_tables(["a", "b", "c"], ["c", "a"])  # LabelMap 1 = a, 2 = b, 3 = c
    np.testing.assert_array_equal(tables["val459"], [65535, 0, 1, 2])
    np.testing.assert_array_equal(tables["val59"], [255, 1, 255, 0])
    np.testing.assert_array_equal(tables["val60"], [0, 2, 0, 1])
    with pytest.raises(ValueError, match="not in labels.txt"):
        context_tables(["a"], ["z"])


def test_label_list_numbering_is_checked(tmp_path):
    (tmp_path / "l.txt").write_text("1: a\n3: b\n")
    with pytest.raises(ValueError, match="expected '2: <name>'"):
        parse_label_list(tmp_path / "l.txt")


def test_prepare_and_idempotence(d2_root):
    label_map = official_context(d2_root)
    out = prepare_pascal_context(d2_root)
    assert out["val459"] == {"written": 2, "skipped": 0}
    labels = d2_root / "pascal_context/ttd_labels"
    with Image.open(labels / "val459/2008_000002.png") as image:
        val459 = np.array(image)
    assert val459.dtype == np.uint16
    np.testing.assert_array_equal(val459, np.where(label_map == 0, 65535, label_map.astype(np.int64) - 1))
    val59 = np.array(Image.open(labels / "val59/2008_000002.png"))
    val60 = np.array(Image.open(labels / "val60/2008_000002.png"))
    aeroplane = label_map == NAMES459.index("aeroplane") + 1
    assert set(val59[aeroplane]) == {0} and set(val60[aeroplane]) == {1}
    other = label_map == NAMES459.index("other000") + 1
    assert set(val59[other]) == {255} and set(val60[other]) == {0}
    assert set(val60[label_map == 0]) == {0}
    assert prepare_pascal_context(d2_root)["val60"] == {"written": 0, "skipped": 2}


def test_load_and_evaluate_the_three_label_sets(d2_root, tmp_path):
    official_context(d2_root)
    prepare_pascal_context(d2_root)
    register(d2_root)
    counts = {n: len(MetadataCatalog.get(n).stuff_classes) for n in
              ("ttd_context459_val", "ttd_context59_val", "ttd_context60_val")}
    assert counts == {"ttd_context459_val": 459, "ttd_context59_val": 59, "ttd_context60_val": 60}
    assert MetadataCatalog.get("ttd_context459_val").stuff_classes == NAMES459
    assert MetadataCatalog.get("ttd_context459_val").ignore_label == 65535
    assert len(DatasetCatalog.get("ttd_context459_val")) == 2
    results = eval_only(list(counts), tmp_path / "out")
    for name in counts:
        assert 0.0 <= results[name]["sem_seg"]["mIoU"] <= 100.0
