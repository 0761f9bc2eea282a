"""tools/calibrate.py: runs a calibration of ttd_d2.evaluation.calibration from a config and prints
the override; bad --dataset / --what combinations name the fix; a test split needs --allow-test-split."""
from pathlib import Path

import pytest

from conftest import load_script
from ttd_d2.data.datasets.synthetic import register_synthetic_split
from ttd_d2.data.synthetic.writer import generate

ROOT = Path(__file__).resolve().parents[2]
TINY_ARCH = str(ROOT / "tests" / "fixtures" / "tiny_clip.json")
# the tiny random test CLIP (32 px) in place of the shipped one
TINY = ["MODEL.DEVICE", "cpu", "MODEL.CLIP.ARCH", TINY_ARCH, "MODEL.CLIP.PRETRAINED", "",
        "INPUT.MIN_SIZE_TEST", "32", "DATALOADER.NUM_WORKERS", "0"]


calibrate = load_script("tools/calibrate.py")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    for layout in ("captions", "semseg"):
        generate(root, layout, "calibtool", 3, seed=5, image_size=32)
        register_synthetic_split(root, layout, "calibtool")
    return "synth_captions_calibtool", "synth_semseg_calibtool"


@pytest.mark.parametrize("what, key", [("tag-threshold", "MODEL.TTD.TAG_THRESHOLD"), ("background", "MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD"),
                                       ("masker-bias-words", "MODEL.MASKER.INIT_B")])
def test_prints_the_calibrated_value_and_its_override(splits, capsys, what, key):
    dataset = splits[0] if what == "tag-threshold" else splits[1]
    argv = ["--config-file", str(ROOT / "configs" / "synthetic" / "clearclip.yaml"), "--what", what, "--dataset", dataset, "--sweep", *TINY]
    assert calibrate.main(argv) == 0
    out = capsys.readouterr().out
    override = [line for line in out.splitlines() if line.startswith("config override: ")]
    assert len(override) == 1 and override[0].split()[2] == key
    value = float(override[0].split()[3])
    assert f"{what} on {dataset}: {value:.3f}" in out and "|" in out  # the sweep table


def test_masker_words_prints_w_and_b_at_one_boundary(splits, capsys):
    argv = ["--config-file", str(ROOT / "configs" / "synthetic" / "clearclip.yaml"), "--what", "masker-words",
            "--dataset", splits[1], "--sweep", *TINY]
    assert calibrate.main(argv) == 0
    out = capsys.readouterr().out
    override = [line for line in out.splitlines() if line.startswith("config override: ")]
    assert len(override) == 1
    keys, values = override[0].split()[2::2], [float(v) for v in override[0].split()[3::2]]
    assert keys == ["MODEL.MASKER.INIT_W", "MODEL.MASKER.INIT_B"]  # no TCL checkpoint in this config
    boundary = float(out.split("boundary cos ")[1].split()[0])
    assert values[1] == pytest.approx(-values[0] * boundary, abs=2e-3)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert "word-target IoU" in table[0] and len(table) >= 2 + 14  # the sweep: every candidate w (TARGET_WEIGHTS)


def test_bad_dataset_names_the_fix(splits):
    config = ["--config-file", str(ROOT / "configs" / "synthetic" / "clearclip.yaml")]
    with pytest.raises(SystemExit, match="needs a split of evaluator_type 'caption'"):
        calibrate.main([*config, "--what", "masker-bias", "--dataset", splits[1], *TINY])
    with pytest.raises(SystemExit, match="not registered"):
        calibrate.main([*config, "--what", "background", "--dataset", "synth_semseg_nowhere", *TINY])


@pytest.mark.parametrize("name, test", [("synth_captions_test", True), ("synth_semseg_test101", True),
                                        ("cityscapes_fine_sem_seg_test", True), ("coco_2017_test-dev", True),
                                        ("synth_captions_val", False), ("ttd_context59_val", False), ("synth_semseg_latest", False)])
def test_test_splits_by_name(name, test):
    assert calibrate.is_test_split(name) is test


def test_a_test_split_is_refused_unless_allowed(tmp_path, capsys):
    generate(tmp_path, "captions", "test_calibtool", 3, seed=6, image_size=32)
    register_synthetic_split(tmp_path, "captions", "test_calibtool")
    argv = ["--config-file", str(ROOT / "configs" / "synthetic" / "clearclip.yaml"), "--what", "tag-threshold",
            "--dataset", "synth_captions_test_calibtool"]
    with pytest.raises(SystemExit) as info:  # before the config is read
        calibrate.main([*argv, *TINY])
    assert info.value.code == 2 and ("--dataset synth_captions_test_calibtool is a test split: calibrate on a validation "
                                     "split (e.g. synth_captions_val), or pass --allow-test-split") in capsys.readouterr().err
    assert calibrate.main([*argv, "--allow-test-split", *TINY]) == 0
    assert "config override: MODEL.TTD.TAG_THRESHOLD" in capsys.readouterr().out
