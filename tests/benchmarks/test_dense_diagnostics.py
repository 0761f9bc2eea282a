"""benchmarks/dense_diagnostics.py (the gate): end to end on tiny generated splits with the tiny
random CLIP, and the mapping of tag masks from the padded patch grid to the image."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script
from ttd_d2.data.datasets.synthetic import register_synthetic_split
from ttd_d2.data.synthetic.writer import generate
from ttd_d2.evaluation.gate import NORMALIZATIONS, SELECTIONS
from ttd_d2.utils.json_report import report_json

ROOT = Path(__file__).resolve().parents[2]
TINY = ["MODEL.CLIP.ARCH", str(ROOT / "tests" / "fixtures" / "tiny_clip.json"), "MODEL.CLIP.PRETRAINED", "",
        "INPUT.MIN_SIZE_TEST", "32", "DATALOADER.NUM_WORKERS", "0"]

diagnostics = load_script("benchmarks/dense_diagnostics.py")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    for layout, n in (("captions", 3), ("semseg", 2), ("image_text", 4)):
        generate(root, layout, "gatetool", n, seed=7, image_size=32)
        register_synthetic_split(root, layout, "gatetool")
    return ["--semseg-dataset", "synth_semseg_gatetool", "--captions-dataset", "synth_captions_gatetool",
            "--train-dataset", "synth_image_text_gatetool"]


def test_cli_reports_the_gate_per_head(splits, tmp_path, capsys):
    out = tmp_path / "reports" / "gate.json"  # its folder is made
    torch.manual_seed(0)
    report = diagnostics.main(["--config-file", str(ROOT / "configs" / "synthetic" / "clearclip.yaml"), "--modes", "clearclip", "naclip",
                               "--num-images", "3", *splits, "--output", str(out), "--", *TINY])
    written = json.loads(out.read_text(), parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    assert written == json.loads(report_json(report)) and not list(out.parent.glob("*.tmp"))
    # no caption of these splits names the background: that subset's IoU is undefined, null in the file
    assert all(np.isnan(h["target_iou_s_pixel_minmax"]["names_background"]) for h in report["heads"].values())
    assert all(h["target_iou_s_pixel_minmax"]["names_background"] is None for h in written["heads"].values())
    assert set(report["heads"]) == {"clearclip", "naclip"}
    printed = capsys.readouterr().out
    for mode, head in report["heads"].items():
        masker = head["masker"]  # the default: w and b on word-level segmentation, as TTD's start
        assert masker["calibrated_on"] == "synth_semseg_gatetool"
        sweep, se = masker["word_target_sweep"], masker["word_target_se"]  # the one-standard-error rule
        assert masker["word_target_iou"] == sweep[masker["w"]] and max(sweep.values()) - sweep[masker["w"]] <= se[masker["w"]]
        assert masker["w"] <= masker["w_best"] and sweep[masker["w_best"]] == max(sweep.values())
        assert masker["w_scaled"] == pytest.approx(masker["w"]) and masker["b_scaled"] == pytest.approx(masker["b"])
        assert set(head["target_iou"]) == set(SELECTIONS)
        assert all(set(v) == set(NORMALIZATIONS) for v in head["target_iou"].values())
        gate = head["gate"]
        assert gate["target_minus_caption_iou"] == pytest.approx(
            head["target_iou"]["s_pixel"]["minmax"] - head["caption_mask"]["CaptionIoU"])
        assert gate["verdict"] in ("PASS", "FAIL") and f"{mode}: {gate['verdict']}" in printed
        assert 0.0 <= head["class_accuracy"] <= 100.0 and head["num_captions"] == 3
    assert report["settings"]["opts"] == TINY


def test_tag_masks_are_mapped_from_the_padded_grid(tmp_path):
    """A 12 x 12 image is padded to 16 x 16 for patch 8: a tag mask on the left column of its 2 x 2
    grid is the image's left 8 columns (stretching the grid over 12 pixels gave 6)."""
    caption_gt = np.zeros((12, 12), np.uint8)
    caption_gt[:, :8] = 1
    Image.fromarray(caption_gt).save(tmp_path / "caption.png")
    Image.fromarray(caption_gt).save(tmp_path / "instances.png")  # one object, the caption region
    record = {"caption_mask_file": str(tmp_path / "caption.png"), "instance_mask_file": str(tmp_path / "instances.png"),
              "caption": "a photo of a circle", "tags": ["circle"],
              "objects": [{"category": "circle", "category_id": 0, "dominant": True}]}
    out = {"tags": ["photo", "circle"], "tag_scores": {"s_pixel": torch.tensor([0.2, 0.9])}, "tag_threshold": 0.5,
           "tag_masks": torch.tensor([[[0.1, 0.1], [0.1, 0.1]], [[0.9, 0.1], [0.9, 0.1]]]),
           "caption_mask": torch.from_numpy(caption_gt.astype(np.float32))}
    stats = diagnostics.caption_statistics(record, out, (12, 12), patch=8, threshold=0.5)
    assert stats["targets"]["gt_tags/none"] == (96, 0, 0, 48)  # exactly the 8 x 12 caption region
    assert stats["targets"]["s_pixel/minmax"] == (96, 0, 0, 48)
    assert stats["aucs"] == [(True, 1.0)] and not stats["names_background"]
    # the target's own statistics (s_pixel, min-max): it covers the one (dominant) object
    assert stats["target"]["counts"] == (96, 0, 0, 48) and stats["target"]["dominant"] == [(96, 96)]
    assert stats["target_gt_tags"] == stats["target"]  # s_pixel selects exactly the ground-truth tag here


def test_tag_masks_finer_than_the_patch_grid_are_mapped_too(tmp_path):
    """TCL's maps are at 4x the patch grid: the 12 x 12 image padded to 16 x 16 has 8 x 8 cells of
    2 pixels, and a mask on the left 4 cell columns is the image's left 8 columns (reading the
    padded size from the map as if it were the patch grid gave 64 x 64, and all 12 columns)."""
    caption_gt = np.zeros((12, 12), np.uint8)
    caption_gt[:, :8] = 1
    Image.fromarray(caption_gt).save(tmp_path / "caption.png")
    Image.fromarray(caption_gt).save(tmp_path / "instances.png")
    record = {"caption_mask_file": str(tmp_path / "caption.png"), "instance_mask_file": str(tmp_path / "instances.png"),
              "caption": "a photo of a circle", "tags": ["circle"],
              "objects": [{"category": "circle", "category_id": 0, "dominant": True}]}
    left = torch.full((8, 8), 0.1)
    left[:, :4] = 0.9
    out = {"tags": ["photo", "circle"], "tag_scores": {"s_pixel": torch.tensor([0.2, 0.9])}, "tag_threshold": 0.5,
           "tag_masks": torch.stack([torch.full((8, 8), 0.1), left]),
           "caption_mask": torch.from_numpy(caption_gt.astype(np.float32))}
    stats = diagnostics.caption_statistics(record, out, (12, 12), patch=8, threshold=0.5)
    assert stats["targets"]["gt_tags/none"] == (96, 0, 0, 48)
    assert stats["targets"]["s_pixel/minmax"] == (96, 0, 0, 48)


def test_masker_scale_keeps_the_caption_mask_and_changes_the_soft_targets(splits, capsys):
    """--masker-scale K multiplies w and b by K: the same binary caption mask (same boundary), other
    min-max targets (softer masks)."""
    def run(*extra):
        torch.manual_seed(0)
        return diagnostics.main(["--config-file", str(ROOT / "configs" / "synthetic" / "clearclip.yaml"), "--modes", "clearclip",
                                 "--num-images", "3", *splits, *extra, "--", *TINY])["heads"]["clearclip"]

    plain, soft = run(), run("--masker-scale", "0.3")
    assert soft["masker"]["scale"] == 0.3 and plain["masker"]["scale"] == 1.0
    assert soft["masker"]["w_scaled"] == pytest.approx(0.3 * plain["masker"]["w_scaled"])
    assert soft["masker"]["b_scaled"] == pytest.approx(0.3 * plain["masker"]["b_scaled"])
    assert soft["caption_mask"] == plain["caption_mask"]
    assert soft["target_iou"] != plain["target_iou"]
    # --calibrate words fits only b, at the config's w; the boundary, so the caption mask, is the same
    bias_only = run("--calibrate", "words")
    assert "w" not in bias_only["masker"] and bias_only["masker"]["w_scaled"] == pytest.approx(10.0)
    assert bias_only["masker"]["b"] / 10.0 == pytest.approx(plain["masker"]["b"] / plain["masker"]["w"])
    assert bias_only["caption_mask"] == plain["caption_mask"]
    with pytest.raises(SystemExit):
        diagnostics.parse_args(["--masker-scale", "0"])  # refused before any model is built
    assert "--masker-scale 0.0: must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--modes", "clearclip", "segformer"], "argument --modes: invalid choice: 'segformer'"),
    (["--num-images", "-1"], "--num-images -1: must be at least 1"),  # sliced the last image off
    (["--num-images", "0"], "--num-images 0: must be at least 1"),
    (["--output", "{file}/gate.json"], "is not a folder"),  # found after the whole run
    (["--output", "{tmp}"], "is a folder: name the JSON file to write"),
])
def test_bad_arguments_are_refused_before_any_model_is_built(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as info:
        diagnostics.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
