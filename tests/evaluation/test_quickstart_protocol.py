"""The quickstart's evaluation protocol (``ttd_d2.evaluation.quickstart_protocol``): with
``--base-cache`` the base model is evaluated once per key (a fake evaluation). The protocol end to
end: tests/tools/test_quickstart.py."""
import json

from conftest import make_tiny_cfg

from ttd_d2.evaluation import quickstart_protocol


def test_base_cache_evaluates_the_base_model_once_per_key(tmp_path, monkeypatch):
    """``evaluate_before`` with a cache: an unchanged base model, config, split set, split
    meta.json and calibration reuse the first evaluation; any change re-evaluates (a fake evaluation)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))

    def write_meta(layout, split, num_images=2):
        folder = tmp_path / "datasets" / "synthetic" / layout / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").write_text(json.dumps({"layout": layout, "split": split, "num_images": num_images}))

    for layout, split in (("semseg", "val"), ("semseg", "test"), ("captions", "test"), ("semseg", "test101"),
                          ("captions", "test101")):
        write_meta(layout, split)
    calls = []

    def fake_evaluate(model, cfg, test_splits, masker, output_dir, desc):
        calls.append(list(test_splits))
        return {s: {"caption_seg": {"CaptionIoU": float(len(calls))}} for s in test_splits}

    biases_set = []
    monkeypatch.setattr(quickstart_protocol, "evaluate", fake_evaluate)
    monkeypatch.setattr(quickstart_protocol, "set_masker_bias", lambda model, bias: biases_set.append(bias))
    cfg = make_tiny_cfg()

    def before(cfg=cfg, bias=-2.2, splits=("test",), cache=str(tmp_path / "cache")):
        masker = {"w": 10.0, "b_as_trained": -2.5, "b_calibrated": bias, "word_iou": 50.0}
        return quickstart_protocol.evaluate_before(None, cfg, list(splits), tmp_path / "out", masker, cache)

    first = before()
    assert before() == first and len(calls) == 1  # unchanged: reused
    assert biases_set == [-2.2, -2.2]  # a cache hit leaves the calibrated bias set, as evaluate does
    write_meta("captions", "test", num_images=3)  # regenerated test split
    assert before() != first and len(calls) == 2
    assert before(bias=-2.3)["test"]["caption_seg"]["CaptionIoU"] == 3.0  # another calibration
    other = cfg.clone()
    other.MODEL.MASKER.INIT_W = 5.0
    before(cfg=other)  # another base config
    before(splits=("test", "test101"))  # another split set
    assert len(calls) == 5 and calls[-1] == ["test", "test101"]
    before(cache="")  # no cache (make quickstart): evaluates every time
    before(cache="")
    assert len(calls) == 7
    assert before() == {"test": {"caption_seg": {"CaptionIoU": 2.0}}} and len(calls) == 7  # still cached
