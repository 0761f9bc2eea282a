"""Per-step scalars read once per writer period (ttd_d2/engine/deferred_scalars.py): the
EventStorage ends up with what detectron2's per-step reads put there, at the same iterations;
a non-finite loss still stops training with detectron2's error, naming its iteration."""
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from conftest import make_tiny_train_cfg
from ttd_d2.data.datasets.synthetic import register_synthetic
from ttd_d2.data.synthetic.writer import generate
from ttd_d2.engine import TTDTrainer
from ttd_d2.engine.deferred_scalars import DeferredScalars, writes_now


def test_flush_writes_each_step_at_its_iteration():
    scalars = DeferredScalars()
    with EventStorage(7) as storage:
        for it, (a, b) in enumerate([(1.0, 2.0), (3.0, 4.5), (5.0, -1.0)]):
            scalars.add(it, {"a": torch.tensor(a), "b": torch.tensor([b])}, note=it)
        seen = []
        scalars.flush(lambda values, extras: (seen.append((storage.iter, values, extras)),
                                              storage.put_scalars(**values, smoothing_hint=False)))
        assert storage.iter == 7 and len(scalars) == 0
        assert seen == [(0, {"a": 1.0, "b": 2.0}, {"note": 0}), (1, {"a": 3.0, "b": 4.5}, {"note": 1}),
                        (2, {"a": 5.0, "b": -1.0}, {"note": 2})]
        assert storage.history("b").values() == [(2.0, 0), (4.5, 1), (-1.0, 2)]
        scalars.flush(lambda *_: pytest.fail("nothing pending"))


def test_writes_now_is_the_periodic_writers_condition():
    assert [i for i in range(45) if writes_now(i, 45, 20)] == [19, 39, 44]
    assert all(writes_now(i, 5, 1) for i in range(5))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root_tag = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, "image_text", f"tr{root_tag}", 8, 0, image_size=32)
    register_synthetic(root)
    name = f"synth_image_text_tr{root_tag}"
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _train(dataset, out, defer, **opts):
    cfg = make_tiny_train_cfg(dataset, out, **{"MODEL.TTD.ENABLED": True, "MODEL.CLIP.DENSE_MODE": "clearclip",
                                               "SOLVER.MAX_ITER": 5, "SOLVER.CHECKPOINT_PERIOD": 100,
                                               "SOLVER.DEFER_METRICS": defer, **opts})
    seed_all_rng(0)  # torch, numpy (the sampler's seed) and random: both runs draw alike
    trainer = TTDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer.storage


def test_deferred_training_records_what_per_step_reads_record(dataset, tmp_path):
    per_step = _train(dataset, tmp_path / "a", False)
    deferred = _train(dataset, tmp_path / "b", True)
    names = {"total_loss", "loss_distill", "loss_tag", "ttd/candidates_per_caption",
             "ttd/selected_per_caption", "ttd/target_caption_iou"}
    assert names <= set(per_step.histories())
    for name in names | {"data_time"}:
        a, b = per_step.history(name).values(), deferred.history(name).values()
        assert [it for _, it in a] == [it for _, it in b] == list(range(5)), name
        if name != "data_time":  # a time, not a result
            assert [v for v, _ in a] == [v for v, _ in b], name


def test_non_finite_loss_stops_at_the_write_naming_its_iteration(dataset, tmp_path, monkeypatch):
    from ttd_d2.modeling.meta_arch.ttd import TTD

    calls = {"n": 0}
    forward = TTD.forward

    def poisoned(self, batched_inputs):
        out = forward(self, batched_inputs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2:  # iteration 1
                out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(TTD, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="iteration=1"):
        _train(dataset, tmp_path / "c", True)
