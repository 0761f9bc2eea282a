"""tools/quickstart.py end to end on a tiny generated benchmark (the shipped base model, two TTD
steps through tools/train_net.py): two runs give identical results, numbers and LoRA tensors;
both models are calibrated the same way and also reported as trained; the picture is drawn;
the console shows the stages' progress bars and the tables, detectron2's log goes to log.txt;
the options reach all three models. ``--base-cache``: tests/evaluation/test_quickstart_protocol.py."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SIZES = ["--train-images", "8", "--val-images", "2", "--test-images", "2", "--workers", "1"]
TRAINING = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1"]
LOG_LINE = re.compile(r"^\[\d\d/\d\d \d\d:\d\d:\d\d")  # detectron2's and the quickstart's log records
STAGES = ("data generation", "calibration before TTD", "evaluation before TTD", "training (TTD)", "calibration after TTD",
          "evaluation after TTD")


def run_quickstart(tmp_path: Path, name: str, *args: str):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    output_dir = tmp_path / name
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "quickstart.py"), "--output-dir", str(output_dir), *SIZES, *args, "--", *TRAINING],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"quickstart failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return output_dir, proc


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("quickstart")
    return run_quickstart(tmp_path, "run1"), run_quickstart(tmp_path, "run2")


def test_two_runs_give_identical_numbers_and_lora_tensors(two_runs):
    (first, _), (second, _) = two_runs
    results = [json.loads((d / "quickstart_results.json").read_text()) for d in (first, second)]
    assert set(results[0]) == {"before", "after", "as_trained", "calibration"}
    assert results[0] == results[1]
    loras = [torch.load(d / "ttd" / "model_lora_final.pth", map_location="cpu", weights_only=True) for d in (first, second)]
    assert loras[0]["lora"] and loras[0].keys() == loras[1].keys()
    for part in loras[0]:  # format, version, settings, then dicts of tensors (docs/LORA_FILES.md)
        if not (isinstance(loras[0][part], dict) and all(torch.is_tensor(v) for v in loras[0][part].values())):
            assert loras[0][part] == loras[1][part], part
            continue
        assert loras[0][part].keys() == loras[1][part].keys()
        for key, tensor in loras[0][part].items():
            assert torch.equal(tensor, loras[1][part][key]), f"{part}/{key} differs between two runs"


def test_both_models_get_the_same_calibration_and_are_also_reported_as_trained(two_runs):
    (output_dir, proc), _ = two_runs
    results = json.loads((output_dir / "quickstart_results.json").read_text())
    masker = results["calibration"]["masker"]
    assert (masker["calibration"], masker["dataset"]) == ("calibrate_word_masker", "synth_semseg_val")
    assert masker["ttd_start_temperature"] == "calibrated"
    lora = torch.load(output_dir / "ttd" / "model_lora_final.pth", map_location="cpu", weights_only=True)
    learnt = {k.split(".")[-1]: float(v) for k, v in lora["masker"].items()}
    shipped = torch.load(ROOT / "checkpoints" / "tcl_synthetic.pth", map_location="cpu", weights_only=True)["model"]
    # the base model's masker as trained: the shipped TCL checkpoint's (MODEL.TCL.MASKER_FROM_WEIGHTS)
    assert masker["before"]["b_as_trained"] == pytest.approx(float(shipped["masker.sim2mask.b"]))
    assert masker["before"]["w"] == pytest.approx(float(shipped["masker.sim2mask.w"]))
    assert masker["after"]["b_as_trained"] == pytest.approx(learnt["b"]) and masker["after"]["w"] == pytest.approx(learnt["w"])
    for model in ("before", "after"):
        assert set(masker[model]) == {"w", "b_as_trained", "b_calibrated", "word_iou", "cos_threshold", "target_w",
                                      "target_b", "target_iou", "target_w_best", "target_iou_best", "target_iou_model_w",
                                      "target_sweep", "target_se"}
        found = masker[model]  # one boundary, at the model's w (evaluations) and the target temperature
        assert found["b_calibrated"] == pytest.approx(-found["w"] * found["cos_threshold"])
        assert found["target_b"] == pytest.approx(-found["target_w"] * found["cos_threshold"])
        assert found["target_iou_best"] == max(found["target_sweep"].values()) >= found["target_iou_model_w"]
        key = str(found["target_w"])  # JSON keys; the one-standard-error rule
        assert found["target_iou_best"] - found["target_sweep"][key] <= found["target_se"][key]
        assert found["target_w"] <= found["target_w_best"] and found["target_iou"] == found["target_sweep"][key]
        assert set(results["as_trained"][model]) == set(results[model])  # the same summary, other masker
    # training started from the base model's calibrated masker (boundary and temperature), not the
    # TCL checkpoint's own
    config = (output_dir / "ttd" / "config.yaml").read_text()
    start = masker["before"]
    assert f"INIT_B: {start['target_b']}" in config and f"INIT_W: {start['target_w']}" in config
    assert "MASKER_FROM_WEIGHTS: false" in config
    assert "Masker calibrated on word-level segmentation" in proc.stdout and "Masker as trained" in proc.stdout
    assert (output_dir / "quickstart_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_shows_bars_and_table_and_the_log_goes_to_the_file(two_runs):
    (output_dir, proc), _ = two_runs
    console = (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
    assert not [line for line in console if LOG_LINE.match(line)], "log records on the console"
    assert "Single tag bias on the synthetic benchmark" in proc.stdout and "| CaptionIoU (2-class)" in proc.stdout
    for stage in STAGES:
        assert f"{stage}: 100%" in proc.stderr, stage
    log = (output_dir / "log.txt").read_text()
    assert "Starting training from iteration 0" in log and "iter: 1" in log  # train_net.py's detectron2 log
    assert "Start inference on" in log and "synth_captions_test" in log  # the quickstart's own evaluation


# ---------------------------------------------------------------------------------- the script's options
@pytest.fixture
def quickstart():
    return load_script("tools/quickstart.py")


def test_dense_mode_option_names_a_head_of_both_configs():
    quickstart = load_script("tools/quickstart.py")
    assert quickstart.parse_args(["--dense-mode", "naclip"]).dense_mode == "naclip"
    assert quickstart.parse_args([]).dense_mode is None  # the configs' own
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--dense-mode", "segment-anything"])


def test_dense_mode_reaches_the_base_model_the_training_and_the_result(tmp_path):
    """--dense-mode sets the head (and --cpu-bf16 the towers' CPU precision) of all three models: the base model evaluated, the TTD run
    (its config.yaml) and the result evaluated after it (once the training run kept its own)."""
    output_dir, _ = run_quickstart(tmp_path, "naclip", "--base-config", str(ROOT / "configs" / "synthetic" / "clearclip.yaml"),
                                   "--ttd-config", str(ROOT / "configs" / "synthetic" / "ttd_clearclip.yaml"), "--dense-mode", "naclip",
                                   "--cpu-bf16", "on")
    for model in ("ttd", "before", "after"):
        config = (output_dir / model / "config.yaml").read_text()
        assert "DENSE_MODE: naclip" in config
        assert "BF16_CPU: true" in config  # --cpu-bf16 reaches all three models too


@pytest.mark.parametrize("choice, native, expected", [("on", False, True), ("off", True, False), ("auto", True, True),
                                                      ("auto", False, False)])
def test_cpu_bf16_option(monkeypatch, choice, native, expected):
    quickstart = load_script("tools/quickstart.py")
    monkeypatch.setattr(quickstart, "cpu_has_native_bf16", lambda: native)
    assert quickstart.parse_args(["--cpu-bf16", choice]).cpu_bf16 == choice
    assert quickstart.use_cpu_bf16(choice) is expected
    assert quickstart.parse_args([]).cpu_bf16 == "auto"


def test_ttd_masker_start_is_the_calibrated_boundary_at_either_temperature(quickstart):
    masker = {"w": 10.0, "b_calibrated": -2.8, "target_w": 3.0, "target_b": -0.84}
    assert quickstart.ttd_masker_start(masker) == (3.0, -0.84)
    assert quickstart.ttd_masker_start(masker, "as_trained") == (10.0, -2.8)
    assert quickstart.ttd_masker_opts(masker, "as_trained") == [
        "MODEL.MASKER.INIT_W", "10.0", "MODEL.MASKER.INIT_B", "-2.8", "MODEL.TCL.MASKER_FROM_WEIGHTS", "False"]
    assert quickstart.parse_args([]).ttd_masker_temperature == "calibrated"
    with pytest.raises(ValueError, match="unknown masker temperature"):
        quickstart.ttd_masker_start(masker, "sharp")
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--ttd-masker-temperature", "sharp"])


@pytest.mark.parametrize("argv, message", [
    (["--skip-training"], "--skip-training reuses {out}/ttd/model_lora_final.pth, which is not there: drop --skip-training"),
    (["--test-splits", "test", "test9", "val2"], "--test-splits test9 val2: no such synthetic split"),
    (["--workers", "-1"], "--workers -1: must be at least 0"),
    (["--test-images", "0"], "--test-images 0: must be at least 1"),
    (["--base-cache", "{tmp}/afile/cache"], "--base-cache {tmp}/afile/cache: {tmp}/afile is not a folder"),
])
def test_bad_arguments_are_refused_before_any_work_or_output(quickstart, tmp_path, capsys, argv, message):
    """Both were found minutes in: after the calibration and the evaluation before TTD (a missing LoRA
    file), or by detectron2's KeyError listing every dataset (an unknown split)."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as info:
        quickstart.main(["--output-dir", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in argv]])
    assert info.value.code == 2 and message.format(out=tmp_path / "out", tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_cannot_be_a_folder_is_refused_before_any_work(quickstart, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as info:
        quickstart.main(["--output-dir", str(tmp_path / "afile" / "out")])
    assert info.value.code == 2
    assert f"--output-dir {tmp_path / 'afile' / 'out'}: {tmp_path / 'afile'} is not a folder" in capsys.readouterr().err


def test_skip_training_takes_the_lora_file_of_a_finished_run(quickstart, tmp_path):
    (tmp_path / "ttd").mkdir()
    (tmp_path / "ttd" / "model_lora_final.pth").write_bytes(b"")
    assert quickstart.parse_args(["--output-dir", str(tmp_path), "--skip-training", "--test-splits", "test", "test101"]).skip_training
