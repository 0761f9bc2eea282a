"""The TTD authors' folder layout (<root>/{train,validation}/{image,json}) as a map-style
dataset: every bad pair skipped and counted, the records trained on through tools/train_net.py."""
import json
import logging
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import load_script, make_tiny_train_cfg
from shard_fixtures import jpeg, write_image_json_folder
from ttd_d2.data.datasets.image_text import FOLDER_SOURCES, load_image_json_folder, register_folder_source


def write_folder(root, good=6):
    write_image_json_folder(root, good)
    (root / "image" / "b_noj.jpg").write_bytes(jpeg(90))  # no JSON
    (root / "json" / "b_noi.json").write_text('{"caption": "no image"}')  # no image
    for stem, content in (("b_empty", b'{"caption": "  "}'), ("b_bad", b"{oops"), ("b_utf", b'{"caption": "\xff\xfe"}'),
                          ("b_none", b'{"url": "x"}'), ("b_corrupt", b'{"caption": "a corrupt image"}')):
        (root / "image" / f"{stem}.jpg").write_bytes(jpeg(91) if stem != "b_corrupt" else b"not a jpeg")
        (root / "json" / f"{stem}.json").write_bytes(content)
    return root


def test_load_counts_every_bad_pair(tmp_path, caplog):
    root = write_folder(tmp_path / "cc3m" / "train")
    with caplog.at_level(logging.INFO, logger="ttd_d2.data.datasets.image_text"):
        records = load_image_json_folder(root, "mine")
    assert [r["image_id"] for r in records] == [f"{i:06d}" for i in range(6)] + ["b_corrupt"]  # corrupt: found in training
    assert records[0] == {"file_name": str(root / "image" / "000000.jpg"), "caption": "a red circle number 0", "image_id": "000000"}
    message = caplog.records[-1].getMessage()
    for kind in ("no_image 1", "no_caption 2", "empty_caption 1", "caption_json_invalid 1", "caption_not_utf8 1"):
        assert kind in message, message
    with pytest.raises(FileNotFoundError, match="<root>/image/ and <root>/json/"):
        load_image_json_folder(tmp_path / "missing")


def test_builtin_names_and_training_through_train_net(tmp_path):
    assert set(FOLDER_SOURCES) <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("ttd_cc3m_folder_train").image_root.endswith("cc3m/train/image")
    name = f"ttd_test_folder_{uuid.uuid4().hex[:8]}"
    register_folder_source(name, write_folder(tmp_path / "data" / "train"))
    try:
        cfg = make_tiny_train_cfg(name, tmp_path / "out", **{"MODEL.TTD.ENABLED": True, "SOLVER.MAX_ITER": 3,
                                                              "SOLVER.CHECKPOINT_PERIOD": 100})
        (tmp_path / "config.yaml").write_text(cfg.dump())
        train_net = load_script("tools/train_net.py")
        from detectron2.engine import default_argument_parser

        train_net.main(default_argument_parser().parse_args(["--config-file", str(tmp_path / "config.yaml")]))
        assert (tmp_path / "out" / "model_lora_final.pth").is_file()  # the corrupt image was skipped, not fatal
        # every bad pair reaches the EventStorage, as the shard streams' do: those skipped when the
        # records were loaded, and the corrupt image each time it is drawn (the first 7 of the 12
        # draws are a permutation of the 7 records, so at least once)
        last = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()][-1]
        expected = {"no_image": 1, "no_caption": 2, "empty_caption": 1, "caption_json_invalid": 1,
                    "caption_not_utf8": 1, "shard_error": 0}
        assert {kind: last[f"data/skipped_{kind}"] for kind in expected} == expected
        assert last["data/skipped_corrupt_image"] >= 1
        assert "training data: 12 samples used; skipped:" in (tmp_path / "out" / "log.txt").read_text()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_folders_from_any_path_through_the_config(tmp_path):
    """DATASETS.IMAGE_TEXT.FOLDERS: folders trained on without registering them; a missing one
    is named before anything is built; folders with shards are refused."""
    from ttd_d2.engine import TTDTrainer
    from ttd_d2.engine.preflight import missing_inputs

    root = write_folder(tmp_path / "mine")
    cfg = make_tiny_train_cfg("unused", tmp_path / "out", **{"MODEL.TTD.ENABLED": True})
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.IMAGE_TEXT.FOLDERS = [str(root), str(tmp_path / "missing")]
    assert [p for p in missing_inputs(cfg, training=True) if "FOLDERS" in p] == [
        f"DATASETS.IMAGE_TEXT.FOLDERS[1]: '{tmp_path / 'missing'}/{sub}' does not exist: give folders holding "
        "image/ and json/ (docs/DATASETS.md, 'Image-text folders')" for sub in ("image", "json")]
    cfg.DATASETS.IMAGE_TEXT.FOLDERS = [str(root)]
    batch = next(iter(TTDTrainer.build_train_loader(cfg)))
    assert len(batch) == 4 and all(x["file_name"].startswith(str(root)) for x in batch)
    cfg.DATASETS.IMAGE_TEXT.SHARDS = [str(tmp_path / "*.tar")]
    with pytest.raises(ValueError, match="train on one kind"):
        TTDTrainer.build_train_loader(cfg)


def test_keep_list_prunes_a_folder_source(tmp_path):
    """DATASETS.IMAGE_TEXT.KEEP_LISTS on record datasets: the keys are the folder's file stems;
    the records left out are counted as not_kept, and a list that keeps none is an error."""
    from ttd_d2.engine import TTDTrainer

    root = write_folder(tmp_path / "mine")
    keep = tmp_path / "keep.txt"
    keep.write_text("# kept\n000001\n000004\n")
    cfg = make_tiny_train_cfg("unused", tmp_path / "out", **{"MODEL.TTD.ENABLED": True})
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.IMAGE_TEXT.FOLDERS = [str(root)]
    cfg.DATASETS.IMAGE_TEXT.KEEP_LISTS = [str(keep)]
    loader = TTDTrainer.build_train_loader(cfg)
    batches = iter(loader)
    seen = {x["file_name"].rsplit("/", 1)[-1] for _ in range(3) for x in next(batches)}
    assert seen == {"000001.jpg", "000004.jpg"}
    assert loader.skipped["not_kept"] == 5  # of the 7 loaded records (6 good + the corrupt one)
    keep.write_text("nothing-like-this\n")
    with pytest.raises(ValueError, match="keeps none of its 7 records"):
        TTDTrainer.build_train_loader(cfg)
