"""The LoRA file format (ttd_d2/modeling/lora/file.py, docs/LORA_FILES.md): content, atomic
writes, and an error naming the file, the config key and the fix for every bad file."""
import pytest
import torch

from ttd_d2.modeling.lora.file import (
    LORA_FILE_FORMAT,
    check_lora_settings,
    is_lora_file,
    lora_settings,
    make_lora_file,
    read_lora_file,
    save_lora_file,
)

SETTINGS = lora_settings(8, 16, ["mlp.c_fc", "attn.in_proj"], ["text", "image"], 2, "tiny_clip", "clearclip")


def content(**extra):
    lora = {"w.lora_A": torch.ones(8, 3), "w.lora_B": torch.zeros(2, 8)}
    return make_lora_file(SETTINGS, lora, {"w": torch.tensor(10.0), "b": torch.tensor(-2.5)}, **extra)


def test_settings_are_normalised():
    assert SETTINGS == {"rank": 8, "alpha": 16.0, "targets": ["attn.in_proj", "mlp.c_fc"], "towers": ["image", "text"],
                        "image_layers": 2, "arch": "tiny_clip", "dense_mode": "clearclip"}
    assert isinstance(SETTINGS["alpha"], float)


def test_round_trip_with_and_without_ema(tmp_path):
    path = str(tmp_path / "sub" / "model_lora_final.pth")
    save_lora_file(content(), path)
    assert not list((tmp_path / "sub").glob("*.tmp"))
    loaded = read_lora_file(path)
    assert loaded["format"] == LORA_FILE_FORMAT and loaded["version"] == 1 and "ema" not in loaded
    assert loaded["settings"] == SETTINGS and torch.equal(loaded["lora"]["w.lora_A"], torch.ones(8, 3))
    save_lora_file(content(ema={"w": torch.full((2, 3), 0.5)}), path)
    assert torch.equal(read_lora_file(path)["ema"]["w"], torch.full((2, 3), 0.5))
    assert is_lora_file(loaded) and is_lora_file({"lora": {}, "masker": {}})  # also the settings-less layout
    assert not is_lora_file({"model": {}}) and not is_lora_file(torch.zeros(1))


def test_missing_settings_cannot_be_written():
    with pytest.raises(ValueError, match="dense_mode"):
        make_lora_file({k: v for k, v in SETTINGS.items() if k != "dense_mode"}, {}, {})


@pytest.mark.parametrize("write, error, match", [
    (None, FileNotFoundError, "does not exist"),
    (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), ValueError, "cannot be read"),
    (lambda p: torch.save({"model": {}, "iteration": 3}, p), ValueError, "full checkpoint.*MODEL.WEIGHTS"),
    (lambda p: torch.save({"lora": {}, "masker": {}}, p), ValueError, "no settings"),
    (lambda p: torch.save({"weights": torch.zeros(1)}, p), ValueError, "not a ttd_d2 LoRA file"),
    (lambda p: torch.save(dict(content(), version=2), p), ValueError, "version 2"),
    (lambda p: torch.save({k: v for k, v in content().items() if k != "masker"}, p), ValueError, "incomplete.*masker"),
])
def test_bad_files_name_the_file_and_the_key(tmp_path, write, error, match):
    path = tmp_path / "bad.pth"
    if write:
        write(path)
    with pytest.raises(error, match=match) as info:
        read_lora_file(str(path))
    assert "MODEL.TTD.LORA.WEIGHTS" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("setting, value, message", [
    ("alpha", 8.0, "MODEL.TTD.LORA.ALPHA is 8.0 but f.pth was trained with 16.0"),
    ("rank", 4, "MODEL.TTD.LORA.RANK is 4 but f.pth was trained with 8"),
    ("targets", ["mlp.c_fc"], "MODEL.TTD.LORA.TARGETS is ['mlp.c_fc'] but f.pth was trained with ['attn.in_proj', 'mlp.c_fc']"),
    ("towers", ["text"], "MODEL.TTD.LORA.TOWERS is ['text'] but f.pth"),
    ("image_layers", 1, "MODEL.TTD.LORA.IMAGE_LAYERS is 1 but f.pth was trained with 2"),
    ("arch", "ViT-B-16", "MODEL.CLIP.ARCH is ViT-B-16 but f.pth was trained with tiny_clip"),
    ("dense_mode", "maskclip", "MODEL.CLIP.DENSE_MODE is maskclip but f.pth was trained with clearclip"),
])
def test_settings_mismatch_names_the_key_and_both_values(setting, value, message):
    check_lora_settings(SETTINGS, dict(SETTINGS), "f.pth")
    with pytest.raises(ValueError) as info:
        check_lora_settings(SETTINGS, dict(SETTINGS, **{setting: value}), "f.pth")
    assert str(info.value).startswith(message)


def test_a_backbone_can_name_its_own_key_for_a_setting():
    with pytest.raises(ValueError, match="^MODEL.TCL.DENSE_PATH is maskclip but f.pth was trained with clearclip"):
        check_lora_settings(SETTINGS, dict(SETTINGS, dense_mode="maskclip"), "f.pth",
                            keys={"dense_mode": "MODEL.TCL.DENSE_PATH"})


def test_unknown_arch_is_not_checked():
    check_lora_settings(SETTINGS, dict(SETTINGS, arch=""), "f.pth")
