"""benchmarks/collect_backbones.py: per backbone, its zero-shot row, its TTD row and the change;
rows in a fixed order, missing rows left out."""
import json

import pytest

from conftest import load_script


def summary(value):
    metrics = {"CaptionIoU": value, "CaptionIoU_per_caption": value, "coverage_dominant": value,
               "coverage_secondary": value}
    return {"caption_seg": metrics, "text_bias": {"cos_secondary": 0.5}, "tag_selection": {"s_pixel": {"F1": value}},
            "sem_seg": {"mIoU": value}, "zero_shot": {"accuracy": value}}


def write_row(root, name, before, after, splits=("test",)):
    (root / name).mkdir(parents=True)
    report = {"before": summary(before), "after": summary(after)}
    if len(splits) > 1:
        report["per_split"] = {s: {} for s in splits}
    (root / name / "quickstart_results.json").write_text(json.dumps(report))


def test_each_backbone_gets_zero_shot_ttd_and_change_rows(tmp_path, capsys):
    write_row(tmp_path, "tcl", 62.5, 68.6, splits=("test", "test101", "test102"))
    write_row(tmp_path, "clearclip", 51.0, 51.5)
    load_script("benchmarks/collect_backbones.py").main(str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    body = [line for line in lines[2:]]
    assert [line.split("|")[1].strip() for line in body] == ["clearclip"] * 3 + ["tcl"] * 3  # ROWS order
    assert "|        62.50 |" in body[3] and "test, test101, test102" in body[3]
    assert "|        68.60 |" in body[4] and "|         6.10 |" in body[5]
    assert "|         0.50 |" in body[2]  # clearclip's change


def test_no_results_says_which_script_to_run(tmp_path):
    with pytest.raises(SystemExit, match="benchmarks/backbones.sh"):
        load_script("benchmarks/collect_backbones.py").main(str(tmp_path))
