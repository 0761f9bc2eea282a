"""Word-level masker calibration: the boundary, the temperature of TTD's targets and the
one-standard-error rule that picks it."""
import numpy as np
import pytest

from calibration_fixtures import register, write_png

# two classes; channel c of the cosines is label c + 1; 255 is ignored
WORD_GT = np.array([[0, 1, 1, 2, 255]])
WORD_COS = np.array([[[0.1, 0.5, 0.4, 0.2, 0.9]], [[0.0, 0.3, 0.1, 0.5, 0.0]]], dtype=np.float32)


def test_word_mask_sweep_by_hand():
    from ttd_d2.evaluation.word_calibration import word_mask_sweep

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
    from ttd_d2.evaluation.word_calibration import calibrate_word_masker_bias

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


def target_ious(cos_maps, gts, threshold, weights):
    """{w: 2-class IoU} of ``word_target_confusions`` summed over the images (255 ignored)."""
    from ttd_d2.evaluation.calibration import mean_iou
    from ttd_d2.evaluation.word_calibration import word_target_confusions

    return {w: mean_iou(conf.sum(0)) for w, conf in word_target_confusions(cos_maps, gts, threshold, weights, 255).items()}


def test_word_target_confusions_by_hand():
    sweep = target_ious([WORD_COS], [WORD_GT], 0.35, [0.1, 100.0])
    # the target: the union of both present classes' min-max masks, against pixels 1-3 (4 ignored).
    # w 100: the sigmoid saturates, min-max keeps the boundary 0.35: class 1 gives pixels 1, 2
    # (and 4), class 2 pixel 3: exact. w 0.1: nearly linear, so each region is cos >= (min + max)
    # / 2 over the whole map (ignored pixel included): class 1 (0.1..0.9, edge 0.5) pixel 1,
    # class 2 (0..0.5, edge 0.25) pixels 1, 3; pixel 2 is missed: fg 2/3, bg 1/2
    assert sweep == pytest.approx({0.1: 100 * (2 / 3 + 1 / 2) / 2, 100.0: 100.0})


def test_word_target_confusions_match_an_independent_formula():
    from ttd_d2.evaluation.calibration import confusion_matrix, mean_iou

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
        assert target_ious(cos_maps, gts, 0.2, [w])[w] == pytest.approx(mean_iou(conf))


def test_calibrate_word_masker_sets_boundary_then_temperature_and_restores_the_masker(tmp_path):
    from ttd_d2.evaluation.word_calibration import calibrate_word_masker, calibrate_word_masker_bias

    records = [{"file_name": "w", "sem_seg_file_name": write_png(tmp_path / "w.png", WORD_GT)}]
    register("calib_masker_test", records, stuff_classes=["background", "a", "b"], ignore_label=255,
             background_threshold=0.3)
    model = WordStubModel(WORD_COS)
    result = calibrate_word_masker(model, [records], "calib_masker_test", thresholds=[0.25, 0.35, 0.45],
                                   weights=[0.1, 100.0])
    bias, _ = calibrate_word_masker_bias(model, [records], "calib_masker_test", thresholds=[0.25, 0.35, 0.45])
    assert result["cos_threshold"] == pytest.approx(0.35) and result["b_for_model_w"] == pytest.approx(bias)
    assert set(result["target_sweep"]) == {0.1, 10.0, 100.0}  # the model's own w is always a candidate
    # w 10 already separates both classes (as w 100); w 0.1 is worse, and one image gives no
    # standard error: the softest of the best is kept
    assert (result["w"], result["target_iou"], result["w_best"]) == (10.0, pytest.approx(100.0), 10.0)
    assert result["target_se"] == pytest.approx({0.1: 0.0, 10.0: 0.0, 100.0: 0.0}, abs=1e-9)
    assert result["b"] == pytest.approx(-10.0 * 0.35) and result["target_iou_model_w"] == pytest.approx(100.0)
    assert float(model.masker.w) == 10.0 and float(model.masker.b) == -2.5


def one_image(tp, fn, fp, tn):
    """An image's {outside, inside} confusion matrix (rows = ground truth)."""
    return np.array([[tn, fp], [fn, tp]])


def test_one_se_rule_keeps_the_best_when_softer_is_worse_on_every_image():
    from ttd_d2.evaluation.word_calibration import softest_within_one_se

    best, worse = one_image(8, 2, 0, 10), one_image(6, 4, 0, 10)
    rule = softest_within_one_se({1.0: np.stack([worse] * 4), 4.0: np.stack([best] * 4)})
    # identical images: every resample gives the same difference, so its standard error is 0
    assert rule["w"] == rule["w_best"] == 4.0 and rule["se"][1.0] == pytest.approx(0.0, abs=1e-9)
    # IoU: best (8/10 + 10/12) / 2, worse (6/10 + 10/14) / 2
    assert rule["deficit"][1.0] == pytest.approx(100 * ((0.8 + 10 / 12) - (0.6 + 10 / 14)) / 2)


def test_one_se_rule_takes_the_softest_the_split_cannot_tell_from_the_best():
    from ttd_d2.evaluation.word_calibration import softest_within_one_se

    # w 1 wins on two images and loses on two; in sum slightly worse than w 4, and w 20 much worse
    soft = np.stack([one_image(9, 1, 0, 10), one_image(4, 6, 0, 10)] * 2)
    sharp = np.stack([one_image(7, 3, 0, 10), one_image(7, 3, 0, 10)] * 2)
    sharpest = np.stack([one_image(2, 8, 0, 10)] * 4)
    rule = softest_within_one_se({1.0: soft, 4.0: sharp, 20.0: sharpest}, num_resamples=500)
    assert rule["w_best"] == 4.0 and 0 < rule["deficit"][1.0] <= rule["se"][1.0]
    assert rule["w"] == 1.0 and rule["deficit"][20.0] > rule["se"][20.0]
    assert softest_within_one_se({1.0: soft, 4.0: sharp, 20.0: sharpest}, num_resamples=500) == rule  # seeded


def test_one_se_rule_refuses_a_split_without_present_classes():
    from ttd_d2.evaluation.word_calibration import softest_within_one_se

    with pytest.raises(ValueError, match="nothing to calibrate the temperature on"):
        softest_within_one_se({1.0: np.zeros((0, 2, 2), dtype=np.int64)})
