"""CPU smoke test of benchmarks/bench_stream_loader.py: tiny shards, one process and two workers."""
import json

from conftest import load_script


def test_smoke(tmp_path):
    bench = load_script("benchmarks/bench_stream_loader.py")
    out = tmp_path / "loader.json"
    report = bench.main(["--root", str(tmp_path / "shards"), "--shards", "2", "--per-shard", "6", "--height", "40",
                         "--width", "48", "--train-size", "32", "--samples", "8", "--warmup", "4", "--batch-size", "4",
                         "--workers", "0", "2", "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report["results"]) == {"0", "2"} and all(r["samples_per_s"] > 0 for r in report["results"].values())
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 2


def test_both_collators(tmp_path):
    bench = load_script("benchmarks/bench_stream_loader.py")
    report = bench.main(["--root", str(tmp_path / "shards"), "--shards", "2", "--per-shard", "6", "--height", "40",
                         "--width", "48", "--train-size", "32", "--samples", "8", "--warmup", "4", "--batch-size", "4",
                         "--workers", "1", "--collate", "trivial", "packed", "--no-tags"])
    assert set(report["results"]) == {"trivial/1", "packed/1"} and report["settings"]["no_tags"]
    assert {r["collate"] for r in report["results"].values()} == {"trivial", "packed"}
