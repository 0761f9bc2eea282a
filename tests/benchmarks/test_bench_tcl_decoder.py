"""benchmarks/bench_tcl_decoder.py on the CPU: its FLOP counts by hand and a report of its three paths."""
import json

from conftest import load_script


def test_conv_flops_by_hand():
    bench = load_script("benchmarks/bench_tcl_decoder.py")
    decoder = bench.GatedDecoder(4)  # 2 blocks of 2 branches, kernel 3
    # per block, 2 branches of 9 taps at the output size (2s)^2; grid 3: s = 3 then 6
    macs = 2 * 9 * 6 ** 2 + 2 * 9 * 12 ** 2
    assert bench.conv_gflops(decoder, 2, 3, 4, phased=False) * 1e9 == 2 * macs * 2 * 4 * 4
    # the first branch of each block: 4 phases of 2x2 taps at the input size s^2
    phased = 4 * 4 * 3 ** 2 + 9 * 6 ** 2 + 4 * 4 * 6 ** 2 + 9 * 12 ** 2
    assert bench.conv_gflops(decoder, 2, 3, 4, phased=True) * 1e9 == 2 * phased * 2 * 4 * 4
    # Winograd: 36 products per 4x4 tile; grid 3 is one tile, 6 four, 12 nine; first branches 4x the channels
    tiles = 4 * 36 * 1 + 36 * 4 + 4 * 36 * 4 + 36 * 9
    assert bench.winograd_gflops(decoder, 2, 3, 4) * 1e9 == 2 * tiles * 2 * 4 * 4


def test_smoke_cpu(tmp_path):
    bench = load_script("benchmarks/bench_tcl_decoder.py")
    out = tmp_path / "decoder.json"
    report = bench.main(["--device", "cpu", "--channels", "8", "--grid", "3", "--batch", "2", "--repeats", "1",
                         "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["bf16"] is False and set(report["paths"]) == {"definition", "decoder", "winograd"}
    for path in report["paths"].values():
        assert path["forward_ms"] > 0 and path["forward_backward_ms"] > 0
    assert report["paths"]["decoder"]["conv_gflop_forward"] < report["paths"]["definition"]["conv_gflop_forward"]
    assert report["max_abs_diff"] < 1e-5 * max(1.0, report["ref_max_abs"])
    assert report["winograd_max_abs_diff"] < 1e-5 * max(1.0, report["ref_max_abs"])
    assert report["winograd_forward_speedup"] > 0
