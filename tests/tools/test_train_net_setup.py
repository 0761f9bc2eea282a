"""``tools/train_net.py``'s setup: CPU runs keep freed memory for reuse (ttd_d2/utils/cpu_memory.py);
a misspelt key or an invalid value stops it with the key named, before any output is written."""
from pathlib import Path

import pytest
from detectron2.engine import default_argument_parser

from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("device, expected_calls", [("cpu", 1), ("cuda", 0)])
def test_setup_keeps_freed_memory_on_cpu_only(monkeypatch, tmp_path, device, expected_calls):
    train_net = load_script("tools/train_net.py")
    calls = []
    monkeypatch.setattr(train_net, "keep_freed_cpu_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(train_net, "check_inputs", lambda cfg, training: None)  # no data on disk here
    args = default_argument_parser().parse_args([
        "--config-file", str(ROOT / "configs" / "synthetic" / "maskclip.yaml"), "--eval-only",
        "MODEL.DEVICE", device, "OUTPUT_DIR", str(tmp_path)])
    cfg = train_net.setup(args)
    assert cfg.MODEL.DEVICE == device and len(calls) == expected_calls


def test_setup_names_a_misspelt_key_and_writes_nothing(tmp_path):
    train_net = load_script("tools/train_net.py")
    out = tmp_path / "out"
    args = default_argument_parser().parse_args([
        "--config-file", str(ROOT / "configs" / "synthetic" / "maskclip.yaml"), "--eval-only",
        "MODEL.TTD.LORA.WEIGHT", "x.pth", "OUTPUT_DIR", str(out)])
    with pytest.raises(SystemExit, match="Non-existent key: MODEL.TTD.LORA.WEIGHT "):
        train_net.setup(args)
    assert not out.exists()


def test_setup_lists_every_invalid_value_and_writes_nothing(tmp_path):
    """Model and training values together, before detectron2's default_setup writes config.yaml and
    log.txt (TTD.from_config and TTDTrainer would each have raised only their own, after it)."""
    train_net = load_script("tools/train_net.py")
    out = tmp_path / "out"
    args = default_argument_parser().parse_args([
        "--config-file", str(ROOT / "configs" / "synthetic" / "ttd_maskclip.yaml"), "MODEL.TTD.TAG_THRESHOLD", "2.0",
        "SOLVER.OPTIMIZER", "adam", "OUTPUT_DIR", str(out)])
    with pytest.raises(SystemExit, match="Cannot start") as error:
        train_net.setup(args)
    message = str(error.value)
    assert "MODEL.TTD.TAG_THRESHOLD = 2.0: must be in [0, 1]" in message
    assert "SOLVER.OPTIMIZER = 'ADAM' is unknown" in message
    assert not out.exists()
