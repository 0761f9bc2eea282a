"""ttd_d2.data.synthetic.presets.ensure_splits: missing splits are drawn at the size asked for
(the quickstart passes its base config's INPUT.TRAIN_SIZE), finished ones are left alone, and a
root drawn at another size is refused with the fix before anything is written."""
import json

import cv2
import pytest

from ttd_d2.data.synthetic.presets import SplitSpec, ensure_splits


def test_splits_are_drawn_at_the_size_asked_for_and_sizes_never_mix(tmp_path):
    root = tmp_path / "synthetic"
    val, test = SplitSpec("semseg", "val", 1, 2), SplitSpec("captions", "test", 100, 2)
    ensure_splits(root, [val], 32)
    folder = root / "semseg" / "val"
    assert json.loads((folder / "meta.json").read_text())["image_size"] == 32
    images = sorted((folder / "images").glob("*.png"))
    assert len(images) == 2 and all(cv2.imread(str(p)).shape[:2] == (32, 32) for p in images)
    stamp = (folder / "meta.json").stat().st_mtime_ns
    ensure_splits(root, [val], 32)  # complete at this size: left alone
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="drawn at 32 px, the base model reads 64 px.*DETECTRON2_DATASETS"):
        ensure_splits(root, [test, val], 64)  # the 64 px benchmark needs its own root
    assert (folder / "meta.json").stat().st_mtime_ns == stamp and not (root / "captions").exists()  # nothing written
