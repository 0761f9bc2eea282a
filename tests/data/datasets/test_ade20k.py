"""ADE20K SceneParsing annotations (0 other, 1-150) -> 150 classes, loaded and evaluated."""
import numpy as np
import pytest
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


FULL = "ADE20K_2021_17_01"
# the release's objectnames (wordnet-style synonyms), 900 of them; the benchmark selects 847
OBJECT_NAMES = ["wall", "person, individual, someone", *[f"object {k}" for k in range(898)]]
SELECTION = [OBJECT_NAMES[1], OBJECT_NAMES[0], *OBJECT_NAMES[2:847]]


def official_ade_full(root):
    import pickle

    (root / FULL).mkdir(parents=True)
    with open(root / FULL / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"objectnames": OBJECT_NAMES, "filename": ["ADE_val_00000001.jpg"]}, f)
    classes = np.zeros((32, 32), np.int64)  # 0 unlabeled
    classes[:, 8:16], classes[:, 16:24], classes[:, 24:] = 1, 2, 900  # wall, person, an unselected object
    classes[0, 24] = 847  # 1-based: objectnames[846] = "object 844", the last selected
    rgb = np.stack([classes // 256 * 10, classes % 256, np.zeros_like(classes)], -1).astype(np.uint8)
    folder = root / FULL / "images/ADE/validation/cultural/apse_indoor"
    write_jpg(folder / "ADE_val_00000001.jpg")
    write_png(folder / "ADE_val_00000001_seg.png", rgb)
    (root / "selection.txt").write_text("".join(f"{n}\n" for n in SELECTION))
    return classes


def test_full_release_classes_decode_by_hand():
    from ttd_d2.data.datasets.ade20k import ade_full_classes

    assert ade_full_classes(np.array([[[10, 3, 0], [250, 255, 7]]], np.uint8)).tolist() == [[259, 6655]]


def test_prepare_847_writes_16_bit_labels_in_the_selections_order(d2_root):
    from ttd_d2.data.datasets.ade20k import prepare_ade20k_847

    classes = official_ade_full(d2_root)
    assert prepare_ade20k_847(d2_root / "selection.txt", d2_root) == {"written": 1, "skipped": 0}
    with Image.open(d2_root / FULL / "ttd_labels/validation847/cultural/apse_indoor/ADE_val_00000001.png") as image:
        out = np.array(image)
    assert out.dtype == np.uint16
    assert (out[1, 0], out[1, 8], out[1, 16], out[1, 24], out[0, 24]) == (65535, 1, 0, 65535, 846)
    assert prepare_ade20k_847(d2_root / "selection.txt", d2_root) == {"written": 0, "skipped": 1}
    (d2_root / "short.txt").write_text("wall\n")
    with pytest.raises(ValueError, match="expected 847"):
        prepare_ade20k_847(d2_root / "short.txt", d2_root)


def test_load_and_evaluate_847(d2_root, tmp_path):
    from ttd_d2.data.datasets.ade20k import prepare_ade20k_847

    official_ade_full(d2_root)
    prepare_ade20k_847(d2_root / "selection.txt", d2_root)
    register(d2_root)
    meta = MetadataCatalog.get("ttd_ade847_val")
    assert meta.stuff_classes == SELECTION and len(meta.stuff_classes) == 847 and meta.ignore_label == 65535
    assert len(DatasetCatalog.get("ttd_ade847_val")) == 1
    results = eval_only(["ttd_ade847_val"], tmp_path / "out")
    assert 0.0 <= results["ttd_ade847_val"]["sem_seg"]["mIoU"] <= 100.0
