"""TCL's gated decoder (``ttd_d2/modeling/backbone/tcl_decoder.py``) as it runs against its
definition, forward without grad (the test-time windows, the frozen teacher) and forward +
backward to its input with frozen weights (the TTD student, whose adapters sit before it).

- ``definition``: per block, the nearest 2x upsampling, then every branch on the upsampled map
  (``GatedConv.forward`` on ``up(x)``: what the decoder computed until 568abeb);
- ``decoder``: ``GatedDecoder.forward`` with ``conv="direct"``, each block's first branch at the
  input resolution (four phase convolutions, ``GatedConv.residual_after_upsample``);
- ``winograd``: the same with ``conv="winograd"`` (``MODEL.TCL.DECODER_CONV``; "auto" picks it
  on float32 CPU tensors): F(4x4, 3x3), the first branches as one convolution of stacked phase
  kernels, frozen weights' transformed kernels kept between calls.

Convolution FLOPs are counted from the shapes (Winograd's: its batched matmul only, not its
transforms); outputs are compared with the definition's. Defaults: the
quickstart's tiny CLIP (width 192, 16 x 16 grid, batch 32) on the CPU; ViT-B/16 at 448 px:
``--channels 768 --grid 28``.

    python benchmarks/bench_tcl_decoder.py --device cpu
    python3 benchmarks/bench_tcl_decoder.py --device cuda --channels 768 --grid 28 --batch 32 --output tcl_decoder.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_timing import device_name, time_ms  # noqa: E402
from ttd_d2.modeling.backbone.tcl_decoder import GatedDecoder  # noqa: E402
from ttd_d2.utils.cpu_memory import keep_freed_cpu_memory  # noqa: E402


def definition_forward(decoder: GatedDecoder, x: torch.Tensor) -> torch.Tensor:
    """The decoder from its definition: upsample, then each branch on the upsampled map."""
    for block in decoder.blocks:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        for branch in block.convs:
            x = x + branch(x)
    return x


def conv_gflops(decoder: GatedDecoder, batch: int, grid: int, channels: int, phased: bool) -> float:
    """Multiply-add FLOPs (2 per MAC) of the decoder's convolutions, forward, in GFLOP."""
    total, side = 0.0, grid
    for block in decoder.blocks:
        k = block.convs[0].conv.kernel_size[0]
        for i, _ in enumerate(block.convs):
            if i == 0 and phased:  # four (k//2+1)^2 kernels at the input resolution
                total += 4 * (k // 2 + 1) ** 2 * side * side
            else:
                total += k * k * (2 * side) ** 2
        side *= 2
    return 2.0 * total * batch * channels * channels / 1e9


def winograd_gflops(decoder: GatedDecoder, batch: int, grid: int, channels: int) -> float:
    """Multiply-add FLOPs of the Winograd path's batched matmuls (36 per 4x4 output tile and
    channel pair; a first branch's stacked phases: 4x the output channels at the input size), in GFLOP."""
    total, side = 0.0, grid
    for block in decoder.blocks:
        for i, _ in enumerate(block.convs):
            tiles = math.ceil((side if i == 0 else 2 * side) / 4) ** 2
            total += 36 * tiles * (4 if i == 0 else 1)
        side *= 2
    return 2.0 * total * batch * channels * channels / 1e9


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels", type=int, default=192, help="decoder width (the ViT's)")
    parser.add_argument("--grid", type=int, default=16, help="patch grid side of the decoder's input")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="under bf16 autocast (auto: on CUDA), as MODEL.CLIP.BF16 runs the towers")
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per measurement (0: 20 CUDA, 3 CPU)")
    parser.add_argument("--output", default="", help="also write the results as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_cpu_memory()  # as tools/train_net.py runs on the CPU
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and device.type == "cuda")
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    torch.manual_seed(0)
    decoder = GatedDecoder(args.channels, conv="direct").to(device).requires_grad_(False)
    with torch.no_grad():
        for block in decoder.blocks:
            for branch in block.convs:
                branch.gate.fill_(0.5)  # trained gates are non-zero; at 0 every branch is scaled away
    winograd = GatedDecoder(args.channels, conv="winograd").to(device).requires_grad_(False)
    winograd.load_state_dict(decoder.state_dict())
    # the decoder's input as TCLHead gives it: a channels-last view of the patch tokens
    tokens = torch.randn(args.batch, args.grid * args.grid, args.channels, device=device, requires_grad=True)

    def as_map():
        return tokens.reshape(args.batch, args.grid, args.grid, args.channels).permute(0, 3, 1, 2)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    results = {"device": device_name(device),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "bf16": bf16,
               "batch": args.batch, "grid": args.grid, "channels": args.channels, "repeats": repeats, "paths": {}}
    outputs = {}
    paths = {"definition": (lambda x: definition_forward(decoder, x), conv_gflops(decoder, args.batch, args.grid, args.channels, False)),
             "decoder": (decoder, conv_gflops(decoder, args.batch, args.grid, args.channels, True)),
             "winograd": (winograd, winograd_gflops(decoder, args.batch, args.grid, args.channels))}
    for name, (forward, gflops) in paths.items():
        def inference():
            with torch.no_grad(), autocast:
                return forward(as_map())

        def training():
            with autocast:
                out = forward(as_map())
            torch.autograd.grad(out.float().square().mean(), tokens)

        outputs[name] = inference().float()
        training()  # warm-up of both
        fwd_ms, train_ms = time_ms(inference, repeats, device), time_ms(training, repeats, device)
        results["paths"][name] = {"conv_gflop_forward": gflops, "forward_ms": round(fwd_ms, 3),
                                  "forward_backward_ms": round(train_ms, 3),
                                  "forward_conv_tflops": round(gflops / fwd_ms, 3)}
        print(f"{name:>10}: forward {fwd_ms:9.3f} ms ({gflops:8.1f} GFLOP of convolutions, "
              f"{gflops / fwd_ms:6.2f} TFLOP/s), forward + input backward {train_ms:9.3f} ms")
    ref = outputs["definition"]
    results["max_abs_diff"] = (outputs["decoder"] - ref).abs().max().item()
    results["winograd_max_abs_diff"] = (outputs["winograd"] - ref).abs().max().item()
    results["ref_max_abs"] = ref.abs().max().item()
    timed = results["paths"]
    for prefix, (slow, fast) in {"": ("definition", "decoder"), "winograd_": ("decoder", "winograd")}.items():
        for what in ("forward", "forward_backward"):
            results[f"{prefix}{what}_speedup"] = round(timed[slow][f"{what}_ms"] / timed[fast][f"{what}_ms"], 3)
    print(f"phases against the definition: forward {results['forward_speedup']}x, forward + backward "
          f"{results['forward_backward_speedup']}x; Winograd against the phases: forward "
          f"{results['winograd_forward_speedup']}x, forward + backward {results['winograd_forward_backward_speedup']}x; "
          f"max |decoder - definition| {results['max_abs_diff']:.3g}, Winograd's {results['winograd_max_abs_diff']:.3g} "
          f"(outputs up to {results['ref_max_abs']:.3g})")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
