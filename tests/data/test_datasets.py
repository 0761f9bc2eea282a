"""Registration of the synthetic benchmark in detectron2's catalogs."""
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ttd_d2.data.datasets import (
    CorruptFileError,
    dataset_name,
    load_synthetic_captions,
    load_synthetic_image_text,
    load_synthetic_semseg,
    read_png,
    register_builtin_synthetic,
    register_synthetic,
    register_synthetic_split,
    require_synthetic_dataset,
)
from ttd_d2.data.synthetic import CLASSES, generate

SEMSEG_KEYS = {"file_name", "sem_seg_file_name", "height", "width", "image_id", "dataset_name"}
CAPTION_KEYS = {"file_name", "height", "width", "image_id", "caption", "tags", "caption_mask_file",
                "instance_mask_file", "objects", "dataset_name"}
IMAGE_TEXT_KEYS = {"file_name", "height", "width", "image_id", "caption", "dataset_name"}


@pytest.fixture
def split():
    """A split name no other test registers (the catalogs are process-wide)."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def root(tmp_path, split):
    for layout in ("semseg", "captions", "image_text"):
        generate(tmp_path, layout, split, 3, seed=4, image_size=32)
    return tmp_path


def test_register_and_load_every_layout(root, split):
    names = register_synthetic(root)
    assert sorted(names) == sorted(dataset_name(layout, split) for layout in ("semseg", "captions", "image_text"))

    semseg = DatasetCatalog.get(f"synth_semseg_{split}")
    assert len(semseg) == 3 and all(set(r) == SEMSEG_KEYS for r in semseg)
    assert semseg[0]["height"] == semseg[0]["width"] == 32
    assert all(os.path.isfile(r["file_name"]) and os.path.isfile(r["sem_seg_file_name"]) for r in semseg)
    meta = MetadataCatalog.get(f"synth_semseg_{split}")
    assert meta.stuff_classes == ["background", *CLASSES] and meta.ignore_label == 255
    assert meta.evaluator_type == "sem_seg" and meta.background_threshold == pytest.approx(0.4)
    assert os.path.isdir(meta.image_root) and os.path.isdir(meta.sem_seg_root)

    captions = DatasetCatalog.get(f"synth_captions_{split}")
    assert len(captions) == 3 and all(set(r) == CAPTION_KEYS for r in captions)
    for record in captions:
        assert record["tags"] and all(tag in record["caption"] for tag in record["tags"])
        assert set(record["objects"][0]) == {"category", "category_id", "dominant"}
        assert os.path.isfile(record["caption_mask_file"]) and os.path.isfile(record["instance_mask_file"])
    meta = MetadataCatalog.get(f"synth_captions_{split}")
    assert meta.thing_classes == list(CLASSES) and meta.evaluator_type == "caption"

    pairs = DatasetCatalog.get(f"synth_image_text_{split}")
    assert len(pairs) == 3 and all(set(r) == IMAGE_TEXT_KEYS for r in pairs)
    assert MetadataCatalog.get(f"synth_image_text_{split}").evaluator_type == "none"
    assert all(r["dataset_name"] == f"synth_image_text_{split}" for r in pairs)


def test_registration_is_idempotent(root, split):
    assert len(register_synthetic(root)) == 3
    assert register_synthetic(root) == []
    assert register_synthetic_split(root, "semseg", split) is None


def test_missing_split_raises_with_the_fix(tmp_path, split):
    missing = tmp_path / "nowhere"
    register_synthetic_split(missing, "captions", split)  # registration itself reads nothing
    with pytest.raises(FileNotFoundError, match="tools/generate_synthetic.py") as info:
        DatasetCatalog.get(f"synth_captions_{split}")
    assert "DETECTRON2_DATASETS" in str(info.value)
    with pytest.raises(FileNotFoundError, match="tools/generate_synthetic.py"):
        require_synthetic_dataset("semseg", split, datasets_root=missing)


def test_registration_of_missing_split_is_replaced_once_generated(tmp_path, split):
    register_synthetic_split(tmp_path / "nowhere", "semseg", split)
    generate(tmp_path / "real", "semseg", split, 2, seed=3, image_size=32)
    assert register_synthetic(tmp_path / "real") == [f"synth_semseg_{split}"]
    assert len(DatasetCatalog.get(f"synth_semseg_{split}")) == 2


def test_builtin_registers_quickstart_names(tmp_path):
    register_builtin_synthetic(tmp_path)  # names may already exist from import: never raises
    assert {"synth_semseg_test", "synth_captions_test102", "synth_image_text_train"} <= set(DatasetCatalog.list())


def test_builtin_import_without_data_names_the_fix(tmp_path):
    code = (
        "import ttd_d2.data.datasets\n"
        "from detectron2.data import DatasetCatalog\n"
        "try:\n"
        "    DatasetCatalog.get('synth_semseg_test')\n"
        "except FileNotFoundError as e:\n"
        "    print('MESSAGE', e)\n"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "absent"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MESSAGE" in result.stdout and "tools/generate_synthetic.py" in result.stdout


def test_missing_image_file_is_named(root, split):
    (root / "semseg" / split / "images" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="000001.png"):
        load_synthetic_semseg(root, split)


def test_missing_mask_file_is_named(root, split):
    register_synthetic(root)
    (root / "captions" / split / "instance_masks" / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="instance_masks/000002.png"):
        DatasetCatalog.get(f"synth_captions_{split}")


def test_corrupt_image_file_is_named(root, split):
    register_synthetic(root)
    bad = root / "image_text" / split / "images" / "000000.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CorruptFileError, match=str(bad)):
        DatasetCatalog.get(f"synth_image_text_{split}")


def test_corrupt_index_file_is_named(root, split):
    register_synthetic(root)
    index = root / "captions" / split / "annotations.json"
    index.write_text("[{")
    with pytest.raises(CorruptFileError, match="annotations.json"):
        DatasetCatalog.get(f"synth_captions_{split}")


def test_read_png(root, split):
    path = root / "semseg" / split / "images" / "000000.png"
    image = read_png(path)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    truncated = path.with_name("truncated.png")
    truncated.write_bytes(path.read_bytes()[:40])  # a PNG signature and half a header
    with pytest.raises(CorruptFileError, match="truncated.png"):
        read_png(truncated)
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_png(path.with_name("absent.png"))


def _edit_annotations(path, edit):
    records = json.loads(path.read_text())
    path.write_text(json.dumps(edit(records)))


def _set(index, key, value):
    def edit(records):
        if value is _DELETE:
            del records[index][key]
        else:
            records[index][key] = value
        return records
    return edit


_DELETE = object()


@pytest.mark.parametrize("edit, fragment", [
    (_set(1, "caption", ""), ", record 1: field 'caption' must be a non-empty string, got ''"),
    (_set(1, "caption", "  "), ", record 1: field 'caption' must be a non-empty string, got '  '"),
    (_set(0, "caption", 7), ", record 0: field 'caption' must be a non-empty string, got 7"),
    (_set(2, "tags", "circle"), ", record 2: field 'tags' must be a list of non-empty strings, got 'circle'"),
    (_set(0, "caption", _DELETE), ", record 0: missing field 'caption'"),
    (_set(0, "objects", []), ", record 0: field 'objects' must be a non-empty list of objects"),
    (lambda records: [], " holds 0 records, .*meta.json says num_images 3"),
])
def test_a_bad_caption_record_names_the_file_the_record_the_field_and_the_fix(root, split, edit, fragment):
    folder = root / "captions" / split
    _edit_annotations(folder / "annotations.json", edit)
    with pytest.raises(CorruptFileError, match=f"annotations.json{fragment}") as info:
        load_synthetic_captions(root, split)
    assert f"delete {folder} and render it again with tools/generate_synthetic.py" in str(info.value)


@pytest.mark.parametrize("edit, fragment", [
    (lambda lines: lines[:1] + ['{"image": "images/000001.png", "caption": " "}'] + lines[2:],
     ", line 2: field 'caption' must be a non-empty string, got ' '"),
    (lambda lines: ['{"image": "images/000000.png", "caption": 3}'] + lines[1:],
     ", line 1: field 'caption' must be a non-empty string, got 3"),
    (lambda lines: lines[:2] + ['{"caption": "a ring"}'], ", line 3: missing field 'image'"),
    (lambda lines: [], " holds 0 records, .*meta.json says num_images 3"),
])
def test_a_bad_image_text_line_names_the_file_the_line_the_field_and_the_fix(root, split, edit, fragment):
    folder = root / "image_text" / split
    path = folder / "captions.jsonl"
    path.write_text("".join(f"{line}\n" for line in edit(path.read_text().splitlines())))
    with pytest.raises(CorruptFileError, match=f"captions.jsonl{fragment}") as info:
        load_synthetic_image_text(root, split)
    assert f"delete {folder} and render it again with tools/generate_synthetic.py" in str(info.value)
