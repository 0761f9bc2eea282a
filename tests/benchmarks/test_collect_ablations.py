"""benchmarks/collect_ablations.py: one base row for the rows' common "before", and a warning
naming the rows evaluated on another base model."""
import json

from conftest import load_script


def summary(value):
    metrics = {"CaptionIoU": value, "CaptionIoU_per_caption": value, "coverage_dominant": value,
               "coverage_secondary": value}
    return {"caption_seg": metrics, "text_bias": {"cos_secondary": 0.5}, "tag_selection": {"s_pixel": {"F1": value}},
            "sem_seg": {"mIoU": value}, "zero_shot": {"accuracy": value}}


def write_row(root, name, before, after):
    (root / name).mkdir(parents=True)
    (root / name / "quickstart_results.json").write_text(json.dumps({"before": summary(before), "after": summary(after)}))


def test_rows_share_one_base_row(tmp_path, capsys):
    write_row(tmp_path, "both", 55.0, 40.0)
    write_row(tmp_path, "tag_only", 55.0, 58.0)
    load_script("benchmarks/collect_ablations.py").main(str(tmp_path))
    out, err = capsys.readouterr()
    assert "| no TTD (base model) |        55.00 |" in out and "58.00" in out
    assert err == ""


def test_rows_with_another_base_are_named(tmp_path, capsys):
    write_row(tmp_path, "both", 55.0, 40.0)
    write_row(tmp_path, "distill_only", 55.0, 39.0)
    write_row(tmp_path, "tag_only", 50.0, 58.0)  # e.g. run on another code version or split set
    load_script("benchmarks/collect_ablations.py").main(str(tmp_path))
    out, err = capsys.readouterr()
    assert "no TTD (base model)" in out and "55.00" in out
    assert "tag_only" in err and "distill_only" not in err and "both" not in err
