"""CC3M-TagMask: the documented schema loads and evaluates end to end (tools/train_net.py
--eval-only, tiny model), GT tags match caption words by the documented rule, malformed files
give errors naming the file and the field."""
import json
import logging
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from PIL import Image

from conftest import TINY_ARCH, load_script
from ttd_d2.data.datasets.cc3m_tagmask import load_cc3m_tagmask, match_tags, register_cc3m_tagmask
from ttd_d2.data.datasets.synthetic import CorruptFileError

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = {
    "000001": {"caption": "Two Dogs playing with a red ball.", "tags": ["dog", "ball", "frisbee"]},
    "000002": {"caption": "cities at night, with bright boxes", "tags": ["City", "boxes", "hot dog"]},
}


def write_fixture(root: Path, entries=ENTRIES, size=(40, 32)):
    for sub in ("image", "json_refined", "mask_using_HQ-SAM"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, entry in entries.items():
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / "image" / f"{stem}.jpg")
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[4:20, 8:30] = 255
        Image.fromarray(mask).save(root / "mask_using_HQ-SAM" / f"{stem}.png")
        (root / "json_refined" / f"{stem}.json").write_text(json.dumps(entry))
    return root


def test_match_tags_case_punctuation_plurals_and_unmatched():
    assert match_tags("Two Dogs playing with a red ball.", ["dog", "Ball!", "frisbee"]) == (["dogs", "ball"], ["frisbee"])
    assert match_tags("cities and horses, a box", ["city", "horse", "boxes", "hot dog"]) == (
        ["cities", "horses", "box"], ["hot dog"])
    assert match_tags("a dog and dogs", ["dogs", "dog"]) == (["dogs", "dog"], [])  # exact match first


def test_records_follow_the_captions_interface(tmp_path):
    records = load_cc3m_tagmask(write_fixture(tmp_path), "x")
    assert [r["image_id"] for r in records] == ["000001", "000002"]
    first, second = records
    assert (first["height"], first["width"]) == (32, 40)
    assert first["tags"] == ["dogs", "ball"] and first["tags_unmatched"] == ["frisbee"]
    assert second["tags"] == ["cities", "boxes"] and second["tags_unmatched"] == ["hot dog"]
    assert Path(first["caption_mask_file"]).name == "000001.png" and first["dataset_name"] == "x"


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "000001.json: not valid JSON"),
    (json.dumps({"tags": ["dog"]}), "000001.json: missing field 'caption'"),
    (json.dumps({"caption": "a dog", "tags": "dog"}), "000001.json: field 'tags' must be a list of non-empty strings"),
    (json.dumps({"caption": "a dog", "tags": ["dog"], "mask": "nope.png"}), "000001.json: its caption mask"),
])
def test_malformed_file_names_the_file_and_field(tmp_path, content, fragment):
    write_fixture(tmp_path)
    (tmp_path / "json_refined" / "000001.json").write_text(content)
    with pytest.raises((CorruptFileError, FileNotFoundError), match=fragment):
        load_cc3m_tagmask(tmp_path)


def _truncate(path, size=50):
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize("spoil, fragment", [
    (_truncate, r"its caption mask .*000001.png is not a readable image \(OSError: Truncated File Read\)"),
    (lambda p: Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(p),
     "its caption mask .*000001.png has PIL mode RGB; a caption mask is a single-channel"),
])
def test_an_unreadable_or_rgb_mask_is_refused_at_load(tmp_path, spoil, fragment):
    spoil(write_fixture(tmp_path) / "mask_using_HQ-SAM" / "000001.png")
    with pytest.raises(CorruptFileError, match="000001.json: " + fragment):
        load_cc3m_tagmask(tmp_path)


def test_a_mask_spoiled_after_loading_is_named_by_the_evaluator(tmp_path):
    from ttd_d2.evaluation.caption_seg import CaptionSegEvaluator

    record = load_cc3m_tagmask(write_fixture(tmp_path), "x")[0]
    mask = Path(record["caption_mask_file"])
    _truncate(mask)  # the data ends inside the compressed pixels
    evaluator = CaptionSegEvaluator("x", distributed=False)
    with pytest.raises(CorruptFileError, match=f"cannot read label file {mask} .*truncated"):
        evaluator.process([record], [{"caption_mask": np.zeros((32, 40), np.float32)}])


def test_a_caption_without_gt_tags_loads_and_its_selected_tags_are_false_positives(tmp_path):
    from ttd_d2.evaluation.tag_selection import TagSelectionEvaluator

    entries = {**ENTRIES, "000001": {"caption": "Two Dogs playing with a red ball.", "tags": []}}
    records = load_cc3m_tagmask(write_fixture(tmp_path, entries), "x")
    assert records[0]["tags"] == records[0]["gt_tags"] == [] and records[1]["tags"] == ["cities", "boxes"]
    evaluator = TagSelectionEvaluator("x", methods=("s_pixel",), distributed=False)
    outputs = [{"tags": tags, "tag_scores": {"s_pixel": torch.tensor([0.9, 0.2])}, "tag_threshold": 0.5}
               for tags in (["dogs", "ball"], ["cities", "night"])]
    evaluator.process(records, outputs)
    result = evaluator.evaluate()["tag_selection/s_pixel"]
    # selected: dogs (no GT tag: FP), cities (TP); relevant: cities; mAP over the second caption only
    assert (result["P"], result["R"], result["mAP"]) == (50.0, 100.0, 100.0)


def test_missing_root_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        load_cc3m_tagmask(tmp_path / "absent")


def test_eval_only_end_to_end(tmp_path, caplog):
    name = register_cc3m_tagmask(write_fixture(tmp_path / "cc3m"), f"cc3m_test_{uuid.uuid4().hex[:8]}")
    try:
        train_net = load_script("tools/train_net.py")
        args = default_argument_parser().parse_args([
            "--config-file", str(ROOT / "configs" / "synthetic" / "maskclip.yaml"), "--eval-only",
            "MODEL.DEVICE", "cpu", "MODEL.CLIP.ARCH", TINY_ARCH, "MODEL.CLIP.PRETRAINED", "",
            "DATASETS.TEST", str((name,)), "INPUT.MIN_SIZE_TEST", "32", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path / "out")])
        torch.manual_seed(0)
        # train_net's setup_logger stops "ttd_d2" propagating to the root logger caplog listens on
        logging.getLogger("ttd_d2").addHandler(caplog.handler)
        with caplog.at_level(logging.INFO, logger="ttd_d2"):
            results = train_net.main(args)  # one dataset: detectron2 returns its results directly
    finally:
        logging.getLogger("ttd_d2").removeHandler(caplog.handler)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert {"tag_selection/s_pixel", "caption_seg"} <= set(results) and "text_bias" not in results
    seg = results["caption_seg"]
    assert seg["CaptionIoU"] / 100 == pytest.approx(1 - seg["mFPR"] - seg["mFNR"])
    assert any("2 GT tags match no caption word" in r.getMessage() for r in caplog.records)
