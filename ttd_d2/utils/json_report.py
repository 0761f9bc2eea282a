"""JSON text of a measurement report that strict parsers read: Python's ``json`` writes an
undefined metric (NaN, e.g. the IoU of an empty subset) as the bare token ``NaN``, which is not
JSON (RFC 8259), so ``jq``, JavaScript and pandas' strict readers refuse the whole file."""
import json
import math
from typing import Any

import numpy as np

__all__ = ["report_json"]


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return _strict(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    elif not isinstance(value, (str, int, float, bool, type(None))) and hasattr(value, "__float__"):
        value = float(value)  # a 0-d tensor
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_json(report: Any, indent: int = 2) -> str:
    """``report`` as JSON text, non-finite floats (NaN, +-inf) as ``null``, numpy scalars and
    arrays and 0-d tensors as numbers and lists; raises ``TypeError`` for anything else JSON
    cannot hold."""
    return json.dumps(_strict(report), indent=indent, allow_nan=False)
