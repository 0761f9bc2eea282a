"""benchmarks/bench_low_rank.py on the CPU: a report per projection, totals over the blocks, and
both forward orders as close to the float32 sum as float32 allows."""
import json

from conftest import load_script


def test_smoke_cpu(tmp_path):
    bench = load_script("benchmarks/bench_low_rank.py")
    out = tmp_path / "low_rank.json"
    report = bench.main(["--batch", "2", "--tokens", "5", "--width", "32", "--rank", "4", "--blocks", "3",
                         "--repeats", "2", "--device", "cpu", "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report["projections"]) == set(bench.PROJECTIONS)
    assert report["projections"]["mlp.c_proj"]["out"] == 32 and report["projections"]["mlp.c_proj"]["in"] == 128
    expected = {"frozen", "accumulated_after", "low_rank_linear", "low_rank_linear_backward", "frozen_backward"}
    for p in report["projections"].values():
        assert set(p["ms"]) == expected and all(v > 0 for v in p["ms"].values())
        assert all(e < 1e-5 for e in p["relative_error"].values())  # float32 against float32
        assert p["kernel_ms"] == {}  # GPU only
    assert "per_blocks_kernel_ms" not in report
    for k, total in report["per_blocks_ms"].items():
        assert abs(total - 3 * sum(p["ms"][k] for p in report["projections"].values())) < 1e-9
