"""benchmarks/bench_attention.py on the CPU: its FLOP count and a report per backend."""
import json

from conftest import load_script


def test_attention_flops_by_hand():
    bench = load_script("benchmarks/bench_attention.py")
    # QK^T and PV: 2 products of 2 * N * N * d multiply-adds each, per (batch, head)
    assert bench.attention_flops(2, 3, 5, 4, backward=False) == 2 * 3 * 2 * (2 * 5 * 5 * 4)
    assert bench.attention_flops(2, 3, 5, 4, backward=True) == 3 * bench.attention_flops(2, 3, 5, 4, backward=False)


def test_smoke_cpu(tmp_path):
    bench = load_script("benchmarks/bench_attention.py")
    out = tmp_path / "attention.json"
    report = bench.main(["--windows", "2", "--batch", "2", "--tokens", "17", "--heads", "2", "--head-dim", "8",
                         "--repeats", "2", "--device", "cpu", "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for case, backward in (("inference", False), ("training", True)):
        assert report[case]["backward"] is backward and report[case]["shape"][2] == 17
        math = report[case]["backends"]["math"]  # every build has the math backend
        assert math["supported"] and math["ms"] > 0 and math["tflops"] > 0
        assert math["max_abs_diff"] < 1e-5  # float32 on the CPU: the reference itself
        for r in report[case]["backends"].values():
            assert r["supported"] or r["reason"]  # an unsupported backend says why
