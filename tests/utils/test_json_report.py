"""ttd_d2.utils.json_report: reports that strict JSON parsers read (NaN and infinities as null)."""
import json
import math

import numpy as np
import pytest
import torch

from ttd_d2.utils.json_report import report_json


def _strict_loads(text):
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))


def test_non_finite_floats_become_null_at_any_depth():
    report = {"iou": float("nan"), "rates": [1.5, math.inf, -math.inf], "nested": {"auc": (np.float32("nan"), 0.25)}}
    assert _strict_loads(report_json(report)) == {"iou": None, "rates": [1.5, None, None], "nested": {"auc": [None, 0.25]}}


def test_numpy_and_tensor_values_become_numbers_and_lists():
    report = {"count": np.int64(3), "mean": np.float64(0.5), "per_class": np.array([0.25, np.nan]),
              "loss": torch.tensor(2.0), "ok": np.bool_(True), "name": "clearclip", "none": None}
    assert _strict_loads(report_json(report, indent=0)) == {"count": 3, "mean": 0.5, "per_class": [0.25, None], "loss": 2.0,
                                                            "ok": True, "name": "clearclip", "none": None}


def test_values_json_cannot_hold_are_refused():
    with pytest.raises(TypeError):
        report_json({"path": object()})
