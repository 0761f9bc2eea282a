"""One adapted projection of ViT-B/16 (``low_rank_linear``) against the frozen projection alone.

For each projection a block adapts by default (``attn.in_proj``, ``attn.out_proj``,
``mlp.c_fc``, ``mlp.c_proj``), on the tokens of a training batch (``--batch`` images of
``--tokens`` tokens), times:

- ``frozen``: ``F.linear(x, W, b)``, what a block without adapters runs;
- ``accumulated_after``: ``x W^T + b`` first, the rank-r product accumulated into it by
  ``addmm_`` (``low_rank_linear``'s forward before d248a59): a memory-bound pass over [N, out];
- ``low_rank_linear``: the project's forward (the rank-r product with the bias first, the frozen
  product accumulated into it: ``ttd_d2/modeling/lora/low_rank.py``);
- ``low_rank_linear_backward``: its forward and backward (input and adapter gradients) beside
  ``frozen_backward``, the frozen projection's forward and input gradient.

On a GPU each also gives its kernels' time (``torch.profiler``, the union of their intervals):
the backward of a small projection is bound by the host in this loop (an autograd function's
Python, eight small kernels), which a training step hides behind the GPU's queue. The forwards
also give their relative error against the same sum in float32. The sums of the rows over
12 blocks are what one image-tower forward of the TTD step's student spends in these products.

    python3 benchmarks/bench_low_rank.py --output low_rank.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_timing import bench_dtype, device_name, time_ms  # noqa: E402
from ttd_d2.modeling.lora.layers import LoRAParametrization  # noqa: E402
from ttd_d2.modeling.lora.low_rank import low_rank_linear  # noqa: E402
from ttd_d2.utils.profiling import profile_steps  # noqa: E402

# (out, in) of ViT-B/16's adapted projections (width 768, MLP 3072)
PROJECTIONS = {"attn.in_proj": (2304, 768), "attn.out_proj": (768, 768), "mlp.c_fc": (3072, 768),
               "mlp.c_proj": (768, 3072)}


def _warm_time_ms(fn, repeats: int, device: torch.device) -> float:
    for _ in range(3):  # cuBLAS heuristics, the caching allocator
        fn()
    return time_ms(fn, repeats, device)


def time_projection(out_features: int, in_features: int, tokens: int, rank: int, repeats: int,
                    device: torch.device, dtype) -> Dict[str, float]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, in_features, device=device, dtype=dtype, generator=gen)
    weight = 0.02 * torch.randn(out_features, in_features, device=device, dtype=dtype, generator=gen)
    bias = 0.01 * torch.randn(out_features, device=device, dtype=dtype, generator=gen)
    lora = LoRAParametrization(out_features, in_features, rank=rank, alpha=2.0 * rank).to(device=device, dtype=dtype)
    with torch.no_grad():
        lora.lora_B.normal_(0, 0.02, generator=gen)
    b_scaled = (lora.scaling * lora.lora_B).detach()
    grad = torch.randn(tokens, out_features, device=device, dtype=dtype, generator=gen)

    def accumulated_after():
        y = F.linear(x, weight, bias)
        return y.addmm_(x @ lora.lora_A.t(), b_scaled.t())

    def forward_backward():
        x_ = x.detach().requires_grad_(True)
        torch.autograd.grad(low_rank_linear(x_, weight, bias, lora), (x_, lora.lora_A, lora.lora_B), grad)

    def frozen_backward():
        x_ = x.detach().requires_grad_(True)
        torch.autograd.grad(F.linear(x_, weight, bias), (x_,), grad)

    with torch.no_grad():
        exact = (F.linear(x.float(), weight.float(), bias.float())
                 + (x.float() @ lora.lora_A.float().t()) @ b_scaled.float().t())
        error = {name: float((fn().float() - exact).norm() / exact.norm()) for name, fn in
                 (("accumulated_after", accumulated_after), ("low_rank_linear", lambda: low_rank_linear(x, weight, bias, lora)))}
        forwards = {"frozen": lambda: F.linear(x, weight, bias), "accumulated_after": accumulated_after,
                    "low_rank_linear": lambda: low_rank_linear(x, weight, bias, lora)}
    calls = dict(forwards, low_rank_linear_backward=forward_backward, frozen_backward=frozen_backward)
    times, busy = {}, {}
    for name, fn in calls.items():
        with torch.set_grad_enabled(name.endswith("_backward")):
            times[name] = _warm_time_ms(fn, repeats, device)
            if device.type == "cuda":  # the kernels alone: small calls are bound by the host
                busy[name] = profile_steps(fn, 10, device).device_busy_ms
    return {"ms": times, "kernel_ms": busy, "relative_error": error}


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="images per training step")
    parser.add_argument("--tokens", type=int, default=785, help="tokens per image: 1 + (448 / 16)^2")
    parser.add_argument("--rank", type=int, default=8, help="MODEL.TTD.LORA.RANK")
    parser.add_argument("--width", type=int, default=768, help="the tower's width (MLP: 4x)")
    parser.add_argument("--blocks", type=int, default=12, help="blocks summed in the totals")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = bench_dtype(device)
    scale = args.width / 768
    shapes = {name: (int(o * scale), int(i * scale)) for name, (o, i) in PROJECTIONS.items()}
    report = {"device": device_name(device),
              "torch": torch.__version__, "dtype": str(dtype), "tokens": args.batch * args.tokens,
              "rank": args.rank, "projections": {}}
    for name, (out_features, in_features) in shapes.items():
        r = time_projection(out_features, in_features, args.batch * args.tokens, args.rank, args.repeats, device, dtype)
        report["projections"][name] = {"out": out_features, "in": in_features, **r}
        print(f"{name:14s} [{out_features} x {in_features}]  " + "  ".join(
            f"{k} {v:.3f} ms" + (f" ({r['kernel_ms'][k]:.3f} in kernels)" if k in r["kernel_ms"] else "")
            for k, v in r["ms"].items()))
    names = next(iter(report["projections"].values()))["ms"].keys()
    for key in ("ms", "kernel_ms"):
        if all(p[key] for p in report["projections"].values()):
            report[f"per_blocks_{key}"] = {k: args.blocks * sum(p[key][k] for p in report["projections"].values())
                                           for k in names}
            print(f"{args.blocks} blocks, {key}: " + "  ".join(f"{k} {v:.2f}" for k, v in report[f"per_blocks_{key}"].items()))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
