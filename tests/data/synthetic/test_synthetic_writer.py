"""The synthetic benchmark on disk (ttd_d2/data/synthetic/writer.py) and its CLI
(tools/generate_synthetic.py): layouts, lossless images, generator versions, crash safety, presets."""
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import load_script
from ttd_d2.data.synthetic import (
    CLASSES,
    GENERATOR_VERSION,
    TRAINING_SINGLE_OBJECT_RADIUS,
    caption_words,
    generate,
    image_rngs,
    is_complete,
    quickstart_splits,
    render_scene,
    writer,
)
from ttd_d2.data.synthetic.render import MIN_IMAGE_SIZE


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ----------------------------------------------------------------------------- on disk
def test_generate_is_deterministic_and_prefix_stable(tmp_path):
    for layout in ("semseg", "captions", "image_text"):
        a = generate(tmp_path / "a", layout, "s", 4, seed=5, image_size=32)
        b = generate(tmp_path / "b", layout, "s", 4, seed=5, image_size=32)
        c = generate(tmp_path / "c", layout, "s", 6, seed=5, image_size=32)
        assert _files(a) == _files(b)
        files_c = _files(c)
        for name, data in _files(a).items():
            if name.endswith(".png"):
                assert files_c[name] == data, name  # image i does not depend on num_images


def test_semseg_layout(tmp_path):
    folder = generate(tmp_path, "semseg", "val", 6, seed=1, image_size=32)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["seed"] == 1 and meta["num_images"] == 6 and meta["classes"] == list(CLASSES)
    assert meta["background_threshold"] == 0.4 and meta["generator_version"] == writer.GENERATOR_VERSION
    for i in range(6):
        image, label = _read(folder / "images" / f"{i:06d}.png"), _read(folder / "labels" / f"{i:06d}.png")
        assert image.shape == (32, 32, 3) and label.shape == (32, 32) and label.dtype == np.uint8
        assert set(np.unique(label)) <= set(range(len(CLASSES) + 1)) and label.max() > 0


def test_captions_layout(tmp_path):
    folder = generate(tmp_path, "captions", "val", 12, seed=2)
    records = json.loads((folder / "annotations.json").read_text())
    assert len(records) == 12
    for record in records:
        assert set(record) == {"image", "caption", "tags", "caption_mask", "instance_mask", "objects"}
        assert _read(folder / record["image"]).shape == (64, 64, 3)
        caption_mask = _read(folder / record["caption_mask"])
        instances = _read(folder / record["instance_mask"])
        assert np.array_equal(caption_mask, (instances > 0).astype(np.uint8))  # union of objects
        assert set(np.unique(instances)) == set(range(len(record["objects"]) + 1))
        words = caption_words(record["caption"])
        assert all(tag in words for tag in record["tags"])
        assert record["tags"] == [o["category"] for o in record["objects"]]
        assert [o["dominant"] for o in record["objects"]] == [True] + [False] * (len(record["objects"]) - 1)
        assert all(CLASSES[o["category_id"]] == o["category"] for o in record["objects"])
        areas = np.bincount(instances.ravel())[1:]
        assert areas[0] == areas.max()


def test_image_text_layout_and_same_scenes_across_layouts(tmp_path):
    folder = generate(tmp_path, "image_text", "train", 12, seed=9)
    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    assert [set(line) for line in lines] == [{"image", "caption"}] * 12
    assert all((folder / line["image"]).is_file() for line in lines)
    semseg = generate(tmp_path, "semseg", "train", 12, seed=9)
    captions = generate(tmp_path, "captions", "train", 12, seed=9)
    singles = 0
    for i in range(12):
        name = f"images/{i:06d}.png"
        assert (semseg / name).read_bytes() == (captions / name).read_bytes()
        if len(render_scene(image_rngs(9, i)[0]).objects) > 1:  # only one-object scenes change radius
            assert (folder / name).read_bytes() == (semseg / name).read_bytes(), name
        else:
            singles += (folder / name).read_bytes() != (semseg / name).read_bytes()
    assert singles > 0


def _png_row_filters(data: bytes, height: int, row_bytes: int) -> set:
    """The filter-type byte of every row of an 8-bit, non-interlaced PNG (its inflated IDATs)."""
    pos, idat = 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(raw) == height * (row_bytes + 1)
    return {raw[row * (row_bytes + 1)] for row in range(height)}


def test_images_are_lossless_and_written_without_row_filters(tmp_path):
    """The PNGs hold the rendered pixels exactly; where OpenCV can choose (4.11+), every row is
    unfiltered (filter type 0), which decodes faster in the loader workers."""
    folder = generate(tmp_path, "image_text", "train", 4, seed=3, image_size=32)
    for i in range(4):
        data = (folder / "images" / f"{i:06d}.png").read_bytes()
        scene = render_scene(image_rngs(3, i)[0], 32, single_object_radius=TRAINING_SINGLE_OBJECT_RADIUS)
        assert np.array_equal(_read(folder / "images" / f"{i:06d}.png")[:, :, ::-1], scene.image)  # BGR on disk
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):
            assert _png_row_filters(data, 32, 32 * 3) == {0}


def test_single_object_radius_default_is_recorded_and_image_text_only(tmp_path):
    assert TRAINING_SINGLE_OBJECT_RADIUS == (0.10, 0.30)
    folder = generate(tmp_path, "image_text", "train", 3, seed=9)  # the default: single objects at every scale
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["single_object_radius"] == [0.1, 0.3] and meta["generator_version"] == GENERATOR_VERSION >= 2
    assert is_complete(tmp_path, "image_text", "train", 3, 9)
    assert is_complete(tmp_path, "image_text", "train", 3, 9, single_object_radius=(0.1, 0.3))
    assert not is_complete(tmp_path, "image_text", "train", 3, 9, single_object_radius=(0.23, 0.3))
    old = generate(tmp_path, "image_text", "old", 3, seed=9, single_object_radius=(0.23, 0.3))
    assert json.loads((old / "meta.json").read_text())["single_object_radius"] == [0.23, 0.3]
    with pytest.raises(ValueError, match="image_text layout only"):
        generate(tmp_path, "captions", "val", 3, seed=9, single_object_radius=(0.1, 0.3))
    with pytest.raises(ValueError, match="0 < low <= high <= 0.5"):
        generate(tmp_path, "image_text", "bad", 3, seed=9, single_object_radius=(0.3, 0.1))
    for layout in ("semseg", "captions"):  # evaluation layouts keep their distribution, unrecorded
        meta = json.loads((generate(tmp_path, layout, "val", 2, seed=9) / "meta.json").read_text())
        assert "single_object_radius" not in meta and meta["generator_version"] == GENERATOR_VERSION


def _age(folder: Path, version: int) -> None:
    """Rewrite a split's meta.json as if another generator version had written it."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["generator_version"] = version
    (folder / "meta.json").write_text(json.dumps(meta))


def test_a_split_of_an_older_generator_version_is_regenerated(tmp_path):
    folder = generate(tmp_path, "captions", "val", 3, seed=2)
    fresh = _files(folder)
    _age(folder, GENERATOR_VERSION - 1)
    records = json.loads((folder / "annotations.json").read_text())
    records[0]["caption"] = "a photo of a circle on a striped background"  # as version 1 could write
    (folder / "annotations.json").write_text(json.dumps(records))
    assert not is_complete(tmp_path, "captions", "val", 3, 2)
    assert generate(tmp_path, "captions", "val", 3, seed=2) == folder  # no overwrite needed
    assert _files(folder) == fresh and is_complete(tmp_path, "captions", "val", 3, 2)
    # a version-1 image_text split (no single_object_radius recorded) is regenerated at the default
    train = generate(tmp_path, "image_text", "train", 2, seed=0, single_object_radius=(0.23, 0.3))
    meta = json.loads((train / "meta.json").read_text())
    del meta["single_object_radius"]
    meta["generator_version"] = 1
    (train / "meta.json").write_text(json.dumps(meta))
    generate(tmp_path, "image_text", "train", 2, seed=0)
    assert json.loads((train / "meta.json").read_text())["single_object_radius"] == [0.1, 0.3]


def test_a_split_of_a_newer_generator_version_is_refused(tmp_path):
    folder = generate(tmp_path, "semseg", "val", 2, seed=1)
    _age(folder, GENERATOR_VERSION + 1)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(tmp_path, "semseg", "val", 2, seed=1)
    generate(tmp_path, "semseg", "val", 2, seed=1, overwrite=True)
    assert is_complete(tmp_path, "semseg", "val", 2, 1)


def test_complete_split_is_skipped_and_mismatch_refused(tmp_path):
    folder = generate(tmp_path, "semseg", "val", 3, seed=1)
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert is_complete(tmp_path, "semseg", "val", 3, 1)
    assert generate(tmp_path, "semseg", "val", 3, seed=1) == folder
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        generate(tmp_path, "semseg", "val", 4, seed=1)
    generate(tmp_path, "semseg", "val", 4, seed=1, overwrite=True)
    assert len(list((folder / "images").iterdir())) == 4
    assert [p.name for p in (tmp_path / "semseg").iterdir()] == ["val"]  # nothing left aside


def test_crash_leaves_nothing_half_written(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(writer, "_write_index", explode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(tmp_path, "captions", "test", 3, seed=100)
    assert list((tmp_path / "captions").iterdir()) == []


def test_quickstart_seed_map():
    specs = quickstart_splits()
    roles = {(s.layout, s.split): (s.seed, s.num_images) for s in specs}
    assert roles[("image_text", "train")] == (0, 20000)
    assert roles[("semseg", "val")] == (1, 200) and roles[("captions", "val")] == (2, 200)
    for split, seed in (("test", 100), ("test101", 101), ("test102", 102)):
        assert roles[("semseg", split)] == roles[("captions", split)] == (seed, 300)
    seeds_by_split = {}
    for s in specs:
        seeds_by_split.setdefault(s.seed, set()).add(s.split)
    assert all(len(splits) == 1 for splits in seeds_by_split.values())  # a seed serves one split


def test_cli_quickstart_preset(tmp_path):
    cli = load_script("tools/generate_synthetic.py")
    argv = ["--root", str(tmp_path), "--preset", "quickstart", "--train-images", "4",
            "--val-images", "2", "--test-images", "3", "--image-size", "32", "--workers", "0"]
    assert cli.main(argv) == 0
    for s in quickstart_splits(4, 2, 3):
        meta = json.loads((tmp_path / s.layout / s.split / "meta.json").read_text())
        assert (meta["seed"], meta["num_images"], meta["image_size"]) == (s.seed, s.num_images, 32)
    assert cli.main(argv) == 0  # second run: everything skipped
    assert cli.main(["--root", str(tmp_path), "--layout", "all", "--split", "x", "--seed", "5",
                     "--num-images", "2", "--workers", "0"]) == 0
    assert all((tmp_path / layout / "x" / "meta.json").is_file() for layout in writer.LAYOUTS)
    with pytest.raises(SystemExit):
        cli.main(["--root", str(tmp_path), "--split", "y"])  # no seed
    with pytest.raises(SystemExit):
        cli.main(["--root", str(tmp_path), "--split", "y", "--seed", "1", "--single-object-radius", "0.3", "0.1"])
    assert cli.main(["--root", str(tmp_path), "--layout", "image_text", "--split", "r", "--seed", "5", "--num-images", "2",
                     "--workers", "0", "--single-object-radius", "0.23", "0.30"]) == 0
    assert json.loads((tmp_path / "image_text" / "r" / "meta.json").read_text())["single_object_radius"] == [0.23, 0.3]


def test_cli_caption_noise(tmp_path):
    cli = load_script("tools/generate_synthetic.py")
    argv = ["--root", str(tmp_path), "--layout", "image_text", "--split", "clean", "--seed", "5", "--num-images", "40",
            "--workers", "0", "--image-size", "64", "--caption-noise", "0", "0"]  # 64: is_complete's and render_scene's default
    assert cli.main(argv) == 0
    folder = tmp_path / "image_text" / "clean"
    assert json.loads((folder / "meta.json").read_text())["caption_noise"] == {"omit_prob": 0.0, "replace_prob": 0.0}
    assert is_complete(tmp_path, "image_text", "clean", 40, 5, omit_prob=0.0, replace_prob=0.0)
    assert not is_complete(tmp_path, "image_text", "clean", 40, 5)  # the default noise is another split
    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    multi = [(line, render_scene(image_rngs(5, i)[0]).objects) for i, line in enumerate(lines)]
    multi = [(line, objects) for line, objects in multi if len(objects) > 1]  # the same scenes as semseg's
    assert multi and all(o.category in caption_words(line["caption"]) for line, objects in multi for o in objects)
    with pytest.raises(SystemExit):
        cli.main([*argv[:-2], "0.7", "0.4"])  # omit + replace > 1


@pytest.mark.parametrize("num_images, image_size, message", [
    (0, 32, "num_images must be positive, got 0"),
    (2, MIN_IMAGE_SIZE - 1, f"image_size {MIN_IMAGE_SIZE - 1}: must be at least {MIN_IMAGE_SIZE}"),
])
def test_generate_refuses_no_images_and_scenes_too_small_to_keep_their_objects(tmp_path, num_images, image_size, message):
    """The renderer's smallest side is the library's check, not only generate_synthetic's (the
    quickstart renders at its config's INPUT.TRAIN_SIZE); nothing is written."""
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, "captions", "val", num_images, seed=2, image_size=image_size)
    assert not any(tmp_path.iterdir())
    generate(tmp_path, "captions", "val", 2, seed=2, image_size=MIN_IMAGE_SIZE)  # the smallest kept size
