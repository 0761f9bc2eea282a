"""Training on streamed shards through tools/train_net.py: bad samples skipped, counted into
the EventStorage and summarised, nothing crashes; too many bad samples stop the run with an
error that names them. (Two ranks: tests/engine/test_distributed_training.py.)"""
import json
import uuid
from types import SimpleNamespace

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

from conftest import load_script, make_tiny_train_cfg
from shard_fixtures import write_shards
from ttd_d2.data.datasets.image_text import register_shard_source
from ttd_d2.data.streams import SkipCountingLoader, SkipCountsHook, TooManyBadSamples


@pytest.fixture
def shard_source(tmp_path):
    data = write_shards(tmp_path / "shards", num_shards=2, good_per_shard=6)
    name = f"ttd_test_shards_{uuid.uuid4().hex[:8]}"
    register_shard_source(name, str(tmp_path / "shards" / "{00000..00001}.tar"))
    yield name, data
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_train_net_on_shards_skips_and_counts_bad_samples(tmp_path, shard_source):
    name, data = shard_source
    cfg = make_tiny_train_cfg(name, tmp_path / "out", **{"MODEL.TTD.ENABLED": True, "SOLVER.MAX_ITER": 4,
                                                          "SOLVER.IMS_PER_BATCH": 3, "SOLVER.CHECKPOINT_PERIOD": 100,
                                                          # unshuffled: every bad sample of the epoch is met by
                                                          # its last good one (each shard ends with a good one)
                                                          "DATASETS.IMAGE_TEXT.SHUFFLE_BUFFER": 0})
    cfg.DATASETS.TRAIN = (name,)
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    train_net = load_script("tools/train_net.py")
    from detectron2.engine import default_argument_parser

    train_net.main(default_argument_parser().parse_args(["--config-file", str(config)]))
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    last = metrics[-1]
    assert last["iteration"] == 3
    # 12 samples used of the 12 good ones: one epoch; shard 0's 8 bad samples all met on the way
    for kind, count in data["bad"].items():
        assert last[f"data/skipped_{kind}"] == count, kind
    assert last["data/skipped_shard_error"] == 0 and 0 < last["data/bad_fraction"] < 0.5
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "training data: 12 samples used; skipped: no_image 1, no_caption 2" in log


def test_mixing_record_datasets_and_shard_sources_is_refused(tmp_path, shard_source):
    from ttd_d2.engine import TTDTrainer

    cfg = make_tiny_train_cfg(shard_source[0], tmp_path / "out", **{"MODEL.TTD.ENABLED": True})
    cfg.DATASETS.TRAIN = (shard_source[0], "synth_image_text_train")
    with pytest.raises(ValueError, match="mixes shard sources with record datasets"):
        TTDTrainer.build_train_loader(cfg)
    cfg.DATASETS.TRAIN = (shard_source[0],)
    cfg.DATASETS.IMAGE_TEXT.SHARDS = [str(tmp_path / "shards" / "00000.tar")]
    cfg.DATASETS.IMAGE_TEXT.WEIGHTS = [1.0]
    with pytest.raises(ValueError, match="1 weights for 2 sources"):
        TTDTrainer.build_train_loader(cfg)


def test_too_many_bad_samples_stop_the_run_naming_them():
    batches = [[{"caption": "a", "skipped": {"corrupt_image": 2, "no_caption": 1}}, {"caption": "b", "skipped": {}}]
               for _ in range(3)]
    loader = SkipCountingLoader(batches)
    assert all("skipped" not in s for batch in loader for s in batch) and loader.used == 6
    hook = SkipCountsHook(loader, max_bad_fraction=0.4, period=1, min_samples=10)
    with EventStorage() as storage:
        hook.trainer = SimpleNamespace(storage=storage, iter=0, max_iter=10)
        with pytest.raises(TooManyBadSamples, match=r"9 of 15 samples read were bad \(60.0% > DATASETS.IMAGE_TEXT."
                                                    r"MAX_BAD_FRACTION 40.0%\): no_caption 3, corrupt_image 6"):
            hook.after_step()
        assert storage.latest()["data/skipped_corrupt_image"][0] == 6
        patient = SkipCountsHook(loader, max_bad_fraction=0.4, period=1, min_samples=100)  # too few samples read yet
        patient.trainer = hook.trainer
        patient.after_step()
        lenient = SkipCountsHook(loader, max_bad_fraction=0.7, period=1, min_samples=10)
        lenient.trainer = hook.trainer
        lenient.after_step()


def _captions_per_step(cfg, resume=False):
    from ttd_d2.engine import TTDTrainer

    trainer = TTDTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    seen = []
    model = trainer.model
    model.register_forward_pre_hook(lambda _, args: seen.append([x["caption"] for x in args[0]]))
    trainer.train()
    return trainer.start_iter, seen


def test_a_resumed_run_continues_the_stream(tmp_path, shard_source):
    """A run restarted from its iteration-2 checkpoint trains iterations 2 and 3 on the samples
    the uninterrupted run trained them on, not on the stream's start."""
    import shutil

    name, _ = shard_source
    opts = {"MODEL.TTD.ENABLED": True, "SOLVER.MAX_ITER": 4, "SOLVER.IMS_PER_BATCH": 2, "SOLVER.CHECKPOINT_PERIOD": 2,
            "DATASETS.IMAGE_TEXT.SHUFFLE_BUFFER": 0, "SEED": 0}
    cfg = make_tiny_train_cfg(name, tmp_path / "whole", **opts)
    cfg.DATASETS.TRAIN = (name,)
    _, whole = _captions_per_step(cfg)
    assert len(whole) == 4
    restarted = tmp_path / "restarted"
    restarted.mkdir()
    shutil.copy(tmp_path / "whole" / "model_0000001.pth", restarted)  # the checkpoint after 2 iterations
    (restarted / "last_checkpoint").write_text("model_0000001.pth")
    cfg = make_tiny_train_cfg(name, restarted, **opts)
    cfg.DATASETS.TRAIN = (name,)
    start, resumed = _captions_per_step(cfg, resume=True)
    assert start == 2 and resumed == whole[2:]
    assert resumed != whole[:2]
