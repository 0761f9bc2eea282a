"""``tools/train_net.py``'s setup: CPU runs keep freed memory for reuse (ttd_d2/utils/cpu_memory.py);
a misspelt key stops it with one line naming the key, before any output is written."""
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
