"""``F.scaled_dot_product_attention`` of ViT-B/16 at 448 px under each of torch's backends.

The towers' blocks call SDPA without choosing a backend (``lora/side_branch.py``), so torch's
dispatcher picks one (cuDNN's for these bf16 shapes on an H200, torch 2.11). This times every backend torch has
on the same inputs, so that a faster one can be measured before it is chosen:

- ``inference``: the test-time protocol's window batch (``--windows`` x 12 heads x 785 tokens x 64,
  forward, no grad);
- ``training``: a training step's batch (``--batch`` images, forward and backward).

Each backend runs under ``torch.nn.attention.sdpa_kernel``; one the inputs do not support is
reported as such. Outputs are checked against the math backend in float32.

    python3 benchmarks/bench_attention.py --output attention.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from bench_timing import bench_dtype, device_name, time_ms  # noqa: E402

BACKENDS = {name.lower(): getattr(SDPBackend, name) for name in
            ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH") if hasattr(SDPBackend, name)}


def attention_flops(batch: int, heads: int, tokens: int, dim: int, backward: bool) -> float:
    """Matmul FLOPs of one attention: QK^T and PV, 2 * 2 * B * H * N^2 * d; its backward twice
    that (four products of the same size: dV, dP, dQ, dK; a recomputation of QK^T not counted)."""
    forward = 4.0 * batch * heads * tokens * tokens * dim
    return forward * (3.0 if backward else 1.0)


def time_backends(shape, backward: bool, repeats: int, device: torch.device, dtype) -> Dict[str, Dict]:
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen, requires_grad=backward) for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    with torch.no_grad():
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    flops = attention_flops(*shape, backward=backward)
    results = {}
    for name, backend in BACKENDS.items():
        def run():
            out = F.scaled_dot_product_attention(q, k, v)
            if backward:
                torch.autograd.grad(out, (q, k, v), grad)
            return out

        try:
            with sdpa_kernel(backend), torch.set_grad_enabled(backward):
                out = run()
                for _ in range(3):
                    run()
                ms = time_ms(run, repeats, device)
        except RuntimeError as error:
            results[name] = {"supported": False, "reason": str(error).splitlines()[0][:200]}
            continue
        results[name] = {"supported": True, "ms": ms, "tflops": flops / ms / 1e9,
                         "max_abs_diff": float((out.detach().float() - reference).abs().max())}
    return results


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=32, help="windows per forward (MODEL.SEG_INFERENCE.WINDOW_BATCH)")
    parser.add_argument("--batch", type=int, default=64, help="images per training step")
    parser.add_argument("--tokens", type=int, default=785, help="1 + (448 / 16)^2")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = bench_dtype(device)
    report = {"device": device_name(device),
              "torch": torch.__version__, "dtype": str(dtype)}
    for case, batch, backward in (("inference", args.windows, False), ("training", args.batch, True)):
        shape = (batch, args.heads, args.tokens, args.head_dim)
        report[case] = {"shape": list(shape), "backward": backward,
                        "backends": time_backends(shape, backward, args.repeats, device, dtype)}
        print(f"{case} {list(shape)}{' fwd+bwd' if backward else ' fwd'}")
        for name, r in report[case]["backends"].items():
            line = (f"{r['ms']:.3f} ms  {r['tflops']:.0f} TFLOP/s  max|diff| {r['max_abs_diff']:.1e}"
                    if r["supported"] else f"not supported: {r['reason']}")
            print(f"  {name:20s} {line}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
