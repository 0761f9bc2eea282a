import yaml
from detectron2.config import get_cfg

from ttd_d2 import add_ttd_config


def test_config_round_trip(tmp_path):
    cfg = get_cfg()
    add_ttd_config(cfg)
    cfg.MODEL.TTD.ENABLED = True
    cfg.MODEL.CLIP.DENSE_MODE = "naclip"
    cfg.MODEL.TTD.LORA.TARGETS = ["mlp.c_fc"]
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.dump())
    loaded = get_cfg()
    add_ttd_config(loaded)
    loaded.merge_from_file(str(path))
    for node in ("CLIP", "MASKER", "TTD", "SEG_INFERENCE"):
        assert loaded.MODEL[node] == cfg.MODEL[node], node
    assert loaded.SOLVER.OPTIMIZER == cfg.SOLVER.OPTIMIZER and loaded.INPUT.TRAIN_SIZE == cfg.INPUT.TRAIN_SIZE
    assert yaml.safe_load(path.read_text())["MODEL"]["TTD"]["ENABLED"] is True


def test_defaults_keep_ttd_off():
    cfg = get_cfg()
    add_ttd_config(cfg)
    assert cfg.MODEL.TTD.ENABLED is False
    assert cfg.MODEL.TTD.TAG_THRESHOLD == 0.5
    assert cfg.MODEL.MASKER.INIT_W == 10.0 and cfg.MODEL.MASKER.INIT_B == -2.5


def test_every_key_has_a_comment():
    """config.py documents each key with a comment line right above it."""
    import inspect
    import ttd_d2.config as module

    lines = inspect.getsource(module).splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("cfg.") and "= CN()" not in stripped:
            assert lines[i - 1].strip().startswith("#"), f"undocumented key: {stripped}"


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml")):
        cfg = get_cfg()
        add_ttd_config(cfg)
        cfg.merge_from_file(str(path))
        assert cfg.MODEL.META_ARCHITECTURE == "TTD", path
