"""Tag-threshold calibration: F1 of the configured method's selection, swept on a caption split."""
import pytest
import torch

from ttd_d2.evaluation.calibration import calibrate_tag_threshold, tag_threshold_sweep

# Two captions; ground-truth tags are a subset of the candidates.
RECORDS = [
    {"file_name": "a", "tags": ["red", "circle"]},
    {"file_name": "b", "tags": ["square", "star"]},
]
CANDIDATES = {"a": ["red", "circle", "photo"], "b": ["square", "star", "background"]}
S_PIXEL = {"a": [0.9, 0.6, 0.4], "b": [0.7, 0.3, 0.2]}
# F1 of s_pixel by hand (tp, fp, fn summed over both captions):
#   t=0.25: a selects all 3 (tp 2, fp 1), b square+star (tp 2)  -> P 4/5, R 4/4 -> F1 8/9
#   t=0.35: a all 3 (tp 2, fp 1), b square (tp 1, fn 1)         -> P 3/4, R 3/4 -> F1 3/4
#   t=0.5 : a red+circle (tp 2), b square (tp 1, fn 1)          -> P 1,   R 3/4 -> F1 6/7
#   t=0.65: a red (tp 1, fn 1), b square (tp 1, fn 1)           -> P 1,   R 1/2 -> F1 2/3
EXPECTED_F1 = {0.25: 800 / 9, 0.35: 75.0, 0.5: 600 / 7, 0.65: 200 / 3}
# s_image ranks the filler word first: its best threshold differs from s_pixel's.
S_IMAGE = {"a": [0.3, 0.2, 0.5], "b": [0.6, 0.1, 0.3]}


class StubModel:
    """Fixed caption outputs per file name, like the TTD model's eval mode (docs/INTERFACES.md)."""

    def __init__(self, tag_scoring="s_pixel"):
        self.tag_scoring = tag_scoring
        self.calls = 0

    def __call__(self, inputs):
        self.calls += 1
        return [
            {"tags": CANDIDATES[x["file_name"]],
             "tag_scores": {"s_pixel": torch.tensor(S_PIXEL[x["file_name"]]),
                            "s_image": torch.tensor(S_IMAGE[x["file_name"]])}}
            for x in inputs
        ]


def captions(scores):
    return [(CANDIDATES[r["file_name"]], r["tags"], scores[r["file_name"]]) for r in RECORDS]


def test_sweep_matches_hand_computed_f1():
    sweep = tag_threshold_sweep(captions(S_PIXEL), list(EXPECTED_F1))
    assert sweep == pytest.approx(EXPECTED_F1)


def test_calibration_returns_the_best_threshold_of_the_configured_method():
    model = StubModel("s_pixel")
    best, sweep = calibrate_tag_threshold(model, [RECORDS[:1], RECORDS[1:]], "stub_captions", thresholds=list(EXPECTED_F1))
    assert best == 0.25 and sweep == pytest.approx(EXPECTED_F1)
    assert model.calls == 2  # one inference pass over the loader
    # s_image: 0.45 selects photo (fp) and square (tp) -> P 1/2, R 1/4, F1 1/3;
    # 0.55 square alone -> P 1, R 1/4, F1 2/5
    best_image, sweep_image = calibrate_tag_threshold(StubModel("s_image"), [RECORDS], "stub_captions",
                                                      thresholds=[0.45, 0.55])
    assert best_image == 0.55 and sweep_image == pytest.approx({0.45: 100 / 3, 0.55: 40.0})
    assert calibrate_tag_threshold(StubModel("s_image"), [RECORDS], "stub_captions", method="s_pixel",
                                   thresholds=list(EXPECTED_F1))[0] == 0.25


def test_ties_go_to_the_threshold_nearest_one_half():
    # every threshold in (0.3, 0.9] selects the same tag: F1 100 for each
    def model(inputs):
        return [{"tags": ["red", "photo"], "tag_scores": {"s_pixel": torch.tensor([0.9, 0.3])}}]

    best, sweep = calibrate_tag_threshold(model, [[{"file_name": "a", "tags": ["red"]}]], "stub", method="s_pixel",
                                          thresholds=[0.35, 0.45, 0.6])
    assert sweep == {0.35: 100.0, 0.45: 100.0, 0.6: 100.0} and best == 0.45


def test_bad_input_names_the_fix():
    with pytest.raises(ValueError, match="MODEL.TTD.TAG_SCORING 'nltk'"):
        calibrate_tag_threshold(StubModel("nltk"), [RECORDS], "stub_captions")
    with pytest.raises(ValueError, match="'pixel' is unknown"):
        calibrate_tag_threshold(StubModel("pixel"), [RECORDS], "stub_captions")
    with pytest.raises(KeyError, match="caption split"):
        calibrate_tag_threshold(StubModel(), [[{"file_name": "a"}]], "synth_semseg_val")
