"""Background/masker calibration helpers and the quickstart summary."""
import numpy as np
import pytest

from calibration_fixtures import register, write_png
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


def test_threshold_sweep_by_hand_with_ties_at_the_thresholds():
    """A pixel whose foreground score equals the threshold is foreground (``score >= t``)."""
    scores = [np.array([[0.25, 0.5]]), np.array([[0.5, 0.75, 0.9]])]
    labels = [np.array([[1, 1]]), np.array([[2, 2, 1]])]
    gts = [np.array([[0, 1]]), np.array([[2, 2, 255]])]  # the 0.9 pixel is ignored
    sweep = threshold_sweep(scores, labels, gts, [0.25, 0.5, 0.75], 3, 255)
    assert list(sweep) == [0.25, 0.5, 0.75]
    # t 0.25: predicted 1, 1, 2, 2: IoU background 0/1, class 1 1/2, class 2 2/2
    assert sweep[0.25] == pytest.approx(100 * (0 + 1 / 2 + 1) / 3)
    # t 0.5: 0, 1, 2, 2: every pixel right
    assert sweep[0.5] == pytest.approx(100.0)
    # t 0.75: 0, 0, 0, 2: background 1/3, class 1 0/1, class 2 1/2
    assert sweep[0.75] == pytest.approx(100 * (1 / 3 + 0 + 1 / 2) / 3)


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
