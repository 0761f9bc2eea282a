"""Background/masker calibration helpers and the quickstart summary."""
import numpy as np
import pytest

from ttd_d2.evaluation.calibration import confusion_matrix, mean_iou, threshold_sweep
from ttd_d2.evaluation.summary import before_after_table, mean_summary, summarize


def test_confusion_matrix_and_mean_iou_by_hand():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    conf = confusion_matrix(pred, gt, 3, ignore_label=255)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    # IoU: class 0 = 1/2, class 1 = 2/3, class 2 = 1
    assert mean_iou(conf) == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)


def test_mean_iou_skips_absent_classes_and_empty():
    conf = np.array([[3, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert mean_iou(conf) == 100.0
    assert np.isnan(mean_iou(np.zeros((2, 2), dtype=int)))


def test_threshold_sweep_matches_direct_thresholding():
    rng = np.random.default_rng(0)
    scores = [rng.random((4, 5)) for _ in range(3)]
    labels = [rng.integers(1, 3, (4, 5)) for _ in range(3)]
    gts = [rng.integers(0, 3, (4, 5)) for _ in range(3)]
    sweep = threshold_sweep(scores, labels, gts, [0.3, 0.7], 3, 255)
    for t, value in sweep.items():
        conf = sum(confusion_matrix(np.where(s >= t, l, 0), g, 3, 255) for s, l, g in zip(scores, labels, gts))
        assert value == pytest.approx(mean_iou(conf))
    assert set(sweep) == {0.3, 0.7}


def fake_results(scale=1.0):
    tag = {"P": 1.0 * scale, "R": 2.0, "F1": 3.0, "Acc": 4.0, "mAP": 5.0}
    return {
        "synth_semseg_test": {"sem_seg": {"mIoU": 10.0 * scale, "fwIoU": 1.0}},
        "synth_captions_test": {
            **{f"tag_selection/{m}": dict(tag) for m in ("s_image", "s_text", "s_pixel", "image_text", "nltk")},
            "caption_seg": {"CaptionIoU": 40.0, "CaptionIoU_per_caption": 30.0, "mFPR": 0.3, "mFNR": 0.3,
                            "coverage_dominant": 70.0, "coverage_secondary": 30.0 * scale, "IoU-caption": 1.0},
            "text_bias": {"cos_dominant": 0.5, "cos_secondary": 0.1, "cos_gap": 0.4},
            "zero_shot": {"accuracy": 90.0, "num_images": 5},
        },
    }


def test_summarize_keeps_the_quickstart_schema():
    summary = summarize(fake_results(), background_threshold=0.4)
    assert set(summary) == {"tag_selection", "caption_seg", "text_bias", "sem_seg", "zero_shot"}
    assert set(summary["tag_selection"]["s_pixel"]) == {"P", "R", "F1", "Acc", "mAP"}
    assert summary["sem_seg"] == {"mIoU": 10.0, "background_threshold": 0.4}
    assert summary["text_bias"] == {"cos_dominant": 0.5, "cos_secondary": 0.1}
    assert "IoU-caption" not in summary["caption_seg"] and summary["zero_shot"] == {"accuracy": 90.0}


def test_mean_summary_and_table():
    a, b = summarize(fake_results(1.0), 0.4), summarize(fake_results(3.0), 0.6)
    mean = mean_summary([a, b])
    assert mean["sem_seg"]["mIoU"] == 20.0 and mean["sem_seg"]["background_threshold"] == pytest.approx(0.5)
    assert mean["caption_seg"]["coverage_secondary"] == 60.0
    table = before_after_table(a, b)
    assert "coverage secondary" in table and "60.000" in table  # 90 - 30


class StubModel:
    """Returns fixed outputs per file: foreground scores (sem-seg) or a caption cos map."""

    def __init__(self, outputs, w=10.0):
        import torch

        self.outputs = outputs
        self.background_threshold = -1.0
        self.masker = type("M", (), {"w": torch.tensor(w)})()

    def __call__(self, inputs):
        return [self.outputs[x["file_name"]] for x in inputs]


def write_png(path, array):
    from PIL import Image

    Image.fromarray(array.astype(np.uint8)).save(path)
    return str(path)


def register(name, records, **meta):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**meta)


def test_calibrate_background_threshold_finds_the_separating_value(tmp_path):
    import torch

    from ttd_d2.evaluation.calibration import calibrate_background_threshold

    gt = np.array([[0, 0, 1, 1]])  # background, background, class 1, class 1
    fg = np.array([[0.2, 0.3, 0.6, 0.7]], dtype=np.float32)  # one foreground class
    records = [{"file_name": "a", "sem_seg_file_name": write_png(tmp_path / "a.png", gt)}]
    register("calib_semseg_test", records, stuff_classes=["background", "thing"], ignore_label=255)
    scores = torch.from_numpy(np.stack([np.zeros_like(fg), fg]))
    model = StubModel({"a": {"sem_seg": scores}})
    best, sweep = calibrate_background_threshold(model, [records], "calib_semseg_test", thresholds=[0.1, 0.25, 0.5, 0.65])
    assert best == 0.5 and sweep[0.5] == 100.0 and sweep[0.1] < 100.0
    assert model.background_threshold == -1.0  # restored


def test_calibrate_masker_bias(tmp_path):
    import torch

    from ttd_d2.evaluation.calibration import calibrate_masker_bias

    gt = np.array([[0, 1, 1, 0]])
    cos = torch.tensor([[0.05, 0.3, 0.25, 0.1]])
    records = [{"file_name": "c", "caption_mask_file": write_png(tmp_path / "c.png", gt)}]
    register("calib_captions_test", records)
    bias, sweep = calibrate_masker_bias(StubModel({"c": {"caption_cos": cos}}), [records], "calib_captions_test",
                                        thresholds=[0.0, 0.2, 0.28])
    assert sweep[0.2] == 100.0 and bias == pytest.approx(-10.0 * 0.2)


# two classes; channel c of the cosines is label c + 1; 255 is ignored
WORD_GT = np.array([[0, 1, 1, 2, 255]])
WORD_COS = np.array([[[0.1, 0.5, 0.4, 0.2, 0.9]], [[0.0, 0.3, 0.1, 0.5, 0.0]]], dtype=np.float32)


def test_word_mask_sweep_by_hand():
    from ttd_d2.evaluation.calibration import word_mask_sweep

    sweep = word_mask_sweep([WORD_COS], [WORD_GT], [0.25, 0.35, 0.45], ignore_label=255)
    # 0.35 separates both classes; 0.25 adds a false positive of class 2 (summed tp 3, fp 1, tn 4:
    # IoU (3/4 + 4/5) / 2), 0.45 a false negative of class 1 (tp 2, fn 1, tn 5: (2/3 + 5/6) / 2)
    assert sweep == pytest.approx({0.25: 77.5, 0.35: 100.0, 0.45: 75.0})


class WordStubModel:
    """Sem-seg output of a real masker on fixed class cosines, after a constant background."""

    def __init__(self, cos):
        import torch

        from ttd_d2.modeling import Masker

        self.cos, self.masker = torch.from_numpy(cos), Masker(10.0, -2.5)

    def __call__(self, inputs):
        import torch

        return [{"sem_seg": torch.cat([torch.full((1, *self.cos.shape[1:]), 0.3), self.masker(self.cos)])}
                for _ in inputs]


def test_calibrate_word_masker_bias_reads_the_cosines_and_restores_the_masker(tmp_path):
    from ttd_d2.evaluation.calibration import calibrate_word_masker_bias

    records = [{"file_name": "w", "sem_seg_file_name": write_png(tmp_path / "w.png", WORD_GT)}]
    register("calib_words_test", records, stuff_classes=["background", "a", "b"], ignore_label=255,
             background_threshold=0.3)
    model = WordStubModel(WORD_COS)
    bias, sweep = calibrate_word_masker_bias(model, [records], "calib_words_test", thresholds=[0.25, 0.35, 0.45])
    assert sweep[0.35] == pytest.approx(100.0) and bias == pytest.approx(-10.0 * 0.35)
    assert float(model.masker.w) == 10.0 and float(model.masker.b) == -2.5
    register("calib_words_nobg", records, stuff_classes=["a", "b"], ignore_label=255)
    with pytest.raises(ValueError, match="no background class"):
        calibrate_word_masker_bias(model, [records], "calib_words_nobg")


def test_word_target_sweep_by_hand():
    from ttd_d2.evaluation.calibration import word_target_sweep

    sweep = word_target_sweep([WORD_COS], [WORD_GT], 0.35, [0.1, 100.0], ignore_label=255)
    # the target: the union of both present classes' min-max masks, against pixels 1-3 (4 ignored).
    # w 100: the sigmoid saturates, min-max keeps the boundary 0.35: class 1 gives pixels 1, 2
    # (and 4), class 2 pixel 3: exact. w 0.1: nearly linear, so each region is cos >= (min + max)
    # / 2 over the whole map (ignored pixel included): class 1 (0.1..0.9, edge 0.5) pixel 1,
    # class 2 (0..0.5, edge 0.25) pixels 1, 3; pixel 2 is missed: fg 2/3, bg 1/2
    assert sweep == pytest.approx({0.1: 100 * (2 / 3 + 1 / 2) / 2, 100.0: 100.0})


def test_word_target_sweep_matches_an_independent_formula():
    from ttd_d2.evaluation.calibration import confusion_matrix, mean_iou, word_target_sweep

    rng = np.random.default_rng(1)
    cos_maps = [rng.uniform(-0.2, 0.6, (3, 6, 7)) for _ in range(4)]
    gts = [rng.integers(0, 4, (6, 7)) for _ in range(4)]
    for w in (0.5, 3.0, 20.0):
        conf = np.zeros((2, 2), dtype=np.int64)
        for cos, gt in zip(cos_maps, gts):
            union = np.zeros(gt.shape, dtype=bool)
            for label in set(gt.ravel().tolist()) - {0}:
                m = 1 / (1 + np.exp(-(w * cos[label - 1] - w * 0.2)))
                union |= (m - m.min()) / (m.max() - m.min()) >= 0.5
            conf += confusion_matrix(union.astype(int), (gt > 0).astype(int), 2, ignore_label=-1)
        assert word_target_sweep(cos_maps, gts, 0.2, [w], ignore_label=255)[w] == pytest.approx(mean_iou(conf))


def test_calibrate_word_masker_sets_boundary_then_temperature_and_restores_the_masker(tmp_path):
    from ttd_d2.evaluation.calibration import calibrate_word_masker, calibrate_word_masker_bias

    records = [{"file_name": "w", "sem_seg_file_name": write_png(tmp_path / "w.png", WORD_GT)}]
    register("calib_masker_test", records, stuff_classes=["background", "a", "b"], ignore_label=255,
             background_threshold=0.3)
    model = WordStubModel(WORD_COS)
    result = calibrate_word_masker(model, [records], "calib_masker_test", thresholds=[0.25, 0.35, 0.45],
                                   weights=[0.1, 100.0])
    bias, _ = calibrate_word_masker_bias(model, [records], "calib_masker_test", thresholds=[0.25, 0.35, 0.45])
    assert result["cos_threshold"] == pytest.approx(0.35) and result["b_for_model_w"] == pytest.approx(bias)
    assert set(result["target_sweep"]) == {0.1, 10.0, 100.0}  # the model's own w is always a candidate
    # w 10 already separates both classes (as w 100): the first best candidate is kept
    assert (result["w"], result["target_iou"]) == (10.0, pytest.approx(100.0))
    assert result["b"] == pytest.approx(-10.0 * 0.35) and result["target_iou_model_w"] == pytest.approx(100.0)
    assert float(model.masker.w) == 10.0 and float(model.masker.b) == -2.5
