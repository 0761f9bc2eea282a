"""CPU smoke test of benchmarks/bench_eval_protocol.py: the tiny CLIP, the five cumulative
settings of the test-time protocol, FLOPs that grow with the passes."""
import json

import pytest

from conftest import load_script

TINY = ["--arch", "tests/fixtures/tiny_clip.json", "--height", "32", "--width", "40", "--crop", "32", "--stride", "16",
        "--images", "1", "--warmup", "0", "--device", "cpu", "--matmul-size", "128", "--classes", "3"]


def test_settings_are_cumulative():
    bench = load_script("benchmarks/bench_eval_protocol.py")
    settings = bench.protocol_settings(448, 224)
    assert list(settings) == ["single", "+slide", "+scales", "+flip", "+pamr"]
    assert settings["single"] == [] and settings["+pamr"][:len(settings["+flip"])] == settings["+flip"]
    assert settings["+pamr"][-4:] == ["MODEL.SEG_INFERENCE.PAMR.NUM_ITER", 10, "MODEL.SEG_INFERENCE.PAMR.DILATIONS",
                                      [1, 2, 4, 8, 12, 24]]


def test_smoke_tiny_cpu(tmp_path):
    bench = load_script("benchmarks/bench_eval_protocol.py")
    out = tmp_path / "eval.json"
    report = bench.main(TINY + ["--output", str(out), "--window-batch", "2"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    results = report["results"]
    assert report["window_batch"] == 2
    assert list(results) == ["single", "+slide", "+scales", "+flip", "+pamr"]
    for r in results.values():
        assert r["images_per_s"] > 0 and r["output_shape"] == [4, 32, 40] and r["times_floor"] > 0
    flops = [results[n]["gflop_per_image"] for n in ("single", "+slide", "+scales", "+flip")]
    assert flops[0] < flops[1] < flops[2] < flops[3]  # each part adds passes
    assert abs(flops[3] - 2 * flops[2]) < 0.05 * flops[3]  # flips double the passes


def test_floor_is_the_flops_at_the_matmul_rate(monkeypatch):
    bench = load_script("benchmarks/bench_eval_protocol.py")
    monkeypatch.setattr(bench, "matmul_tflops", lambda device, n: 100.0)  # 100 TFLOP/s
    report = bench.main(TINY + ["--settings", "single"])
    r = report["results"]["single"]
    assert abs(r["floor_ms_per_image"] - r["gflop_per_image"] / 100.0) < 1e-12  # 1 GFLOP at 100 TFLOP/s = 0.01 ms
    assert abs(r["times_floor"] - r["ms_per_image"] / r["floor_ms_per_image"]) < 1e-9


def test_profile_per_setting():
    bench = load_script("benchmarks/bench_eval_protocol.py")
    report = bench.main(TINY + ["--settings", "single", "+slide", "--profile", "2"])
    for name in ("single", "+slide"):
        profile = report["results"][name]["profile"]
        assert profile["steps"] == 2 and profile["wall_ms"] > 0 and profile["top"]


def test_compiled_blocks_run_the_full_protocol():
    """--compile: the image blocks ran compiled in the timed loop (after the FLOP count), and the
    readout says so; PAMR's kernel is recorded."""
    bench = load_script("benchmarks/bench_eval_protocol.py")
    report = bench.main(TINY + ["--settings", "+pamr", "--compile", "default", "--pamr-kernel", "eager"])
    assert 0 < report["results"]["+pamr"]["attention_gflop_per_image"] < report["results"]["+pamr"]["gflop_per_image"]
    assert report["settings"]["pamr_kernel"] == "eager" and report["settings"]["compile"] == "default"
    assert report["results"]["+pamr"]["output_shape"] == [4, 32, 40]
    assert report["results"]["+pamr"]["compiled_regions_per_image"] >= 1


def test_bench_pamr_cpu():
    """benchmarks/bench_pamr.py on the CPU: the eager kernel, its traffic, a JSON report."""
    bench = load_script("benchmarks/bench_pamr.py")
    report = bench.main(["--classes", "3", "--height", "12", "--width", "10", "--iterations", "2", "--dilations", "1", "2",
                         "--kernels", "eager", "--repeats", "1", "--device", "cpu"])
    (row,) = report["results"]
    assert row["kernel"] == "eager" and row["max_abs_diff_vs_eager"] == 0 and row["iteration_ms"] > 0
    assert report["step_bytes"] == 4 * 12 * 10 * (2 * 3 + 16)
    assert row["grid_order"] == "class blocks fastest"
    assert bench.parse_blocks("256,2") == (256, 2, True) and bench.parse_blocks("128,4,pixel") == (128, 4, False)
    with pytest.raises(SystemExit, match="PIXELS,CLASSES"):
        bench.parse_blocks("256,2,rows")


def test_achieved_rates_divide_each_familys_flops_by_its_kernel_time():
    bench = load_script("benchmarks/bench_eval_protocol.py")
    result = {"gflop_per_image": 100.0, "attention_gflop_per_image": 20.0,
              "profile": {"categories": {"matmul": 0.2, "attention": 0.1, "norm": 0.05}}}
    assert bench.achieved_rates(result) == {"matmul": pytest.approx(400.0), "attention": pytest.approx(200.0)}
    assert bench.achieved_rates({"gflop_per_image": 1.0, "attention_gflop_per_image": 0.0, "profile": {}}) == {}


def test_trailing_overrides_reach_every_setting():
    """KEY VALUE after the options: configs/tcl.yaml without its checkpoint file."""
    bench = load_script("benchmarks/bench_eval_protocol.py")
    report = bench.main(TINY + ["--config-file", "configs/tcl.yaml", "--settings", "single", "--classes", "3",
                                "MODEL.TCL.WEIGHTS", '""'])
    assert report["settings"]["opts"] == ["MODEL.TCL.WEIGHTS", '""']
    assert report["results"]["single"]["gflop_per_image"] > 0
