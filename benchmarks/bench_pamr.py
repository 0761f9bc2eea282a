"""PAMR's ways of running an iteration (``MODEL.SEG_INFERENCE.PAMR.KERNEL``), timed alone.

The paper's protocol refines K class maps at the image's resolution with 10 iterations over
dilations 1 2 4 8 12 24. This times ``PAMR.forward`` (affinity + iterations) per kernel with
CUDA events after a warm-up, checks every kernel's output against eager's, and reports each
iteration's memory traffic floor: one read of the scores and the weights and one write of the
result, at the device's copy bandwidth measured here (``torch.Tensor.copy_`` of a 1 GiB buffer).

    python3 benchmarks/bench_pamr.py --classes 21 --height 448 --width 597 --output pamr.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench_timing import device_name, time_ms  # noqa: E402
from ttd_d2.modeling import pamr_kernel  # noqa: E402
from ttd_d2.modeling.pamr import PAMR, PAMR_KERNELS  # noqa: E402


def copy_bandwidth_gbs(device: torch.device, mib: int = 1024) -> float:
    """Read + write GB/s of one large device copy (the memory floor's rate)."""
    src = torch.empty(mib * 2 ** 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = time_ms(lambda: dst.copy_(src), 10, device)
    return 2 * src.numel() / ms / 1e6


def parse_blocks(text: str):
    """``PIXELS,CLASSES[,ORDER]`` -> (BLOCK_PIXELS, BLOCK_CLASSES, CLASS_BLOCKS_FASTEST)."""
    fields = text.split(",")
    if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] not in ("class", "pixel")):
        raise SystemExit(f"error: --triton-blocks takes PIXELS,CLASSES[,class|pixel], got {text!r}")
    return int(fields[0]), int(fields[1]), len(fields) == 2 or fields[2] == "class"


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--height", type=int, default=448)
    parser.add_argument("--width", type=int, default=597)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--dilations", type=int, nargs="+", default=[1, 2, 4, 8, 12, 24])
    parser.add_argument("--kernels", nargs="+", default=["eager", "triton"], choices=PAMR_KERNELS)
    parser.add_argument("--triton-blocks", nargs="*", default=[], metavar="PIXELS,CLASSES[,ORDER]",
                        help="extra Triton block shapes to time (pamr_kernel.BLOCK_PIXELS, BLOCK_CLASSES), "
                             "ORDER 'class' (the default: class blocks fastest in the grid) or 'pixel'")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    image = torch.rand(1, 3, args.height, args.width, device=device)
    masks = torch.rand(1, args.classes, args.height, args.width, device=device)
    reference = PAMR(args.iterations, args.dilations, kernel="eager")(image, masks)
    plane = args.height * args.width
    neighbours = 8 * len(args.dilations)
    step_bytes = 4 * plane * (2 * args.classes + neighbours)
    bandwidth = copy_bandwidth_gbs(device) if device.type == "cuda" else float("nan")
    rows = []
    default_blocks = (pamr_kernel.BLOCK_PIXELS, pamr_kernel.BLOCK_CLASSES, pamr_kernel.CLASS_BLOCKS_FASTEST)
    runs = [(kernel, default_blocks) for kernel in args.kernels]
    runs += [("triton", parse_blocks(blocks)) for blocks in args.triton_blocks]
    for kernel, blocks in runs:
        pamr_kernel.BLOCK_PIXELS, pamr_kernel.BLOCK_CLASSES, pamr_kernel.CLASS_BLOCKS_FASTEST = blocks
        pamr = PAMR(args.iterations, args.dilations, kernel=kernel)
        out = pamr(image, masks)  # warm-up (compiles)
        error = (out - reference).abs().max().item()
        weights = pamr.affinity(image)
        total_ms = time_ms(lambda: pamr(image, masks), args.repeats, device)
        step_ms = time_ms(lambda: pamr._step(masks, weights), args.repeats, device)
        floor_ms = step_bytes / bandwidth / 1e6
        order = "class" if blocks[2] else "pixel"
        rows.append({"kernel": kernel, "triton_blocks": list(blocks[:2]), "grid_order": f"{order} blocks fastest",
                     "forward_ms": total_ms, "iteration_ms": step_ms, "iteration_floor_ms": floor_ms, "x_floor": step_ms / floor_ms, "max_abs_diff_vs_eager": error})
        print(f"{kernel:>8} {blocks[:2]} {order}-fastest: forward {total_ms:8.3f} ms, iteration {step_ms:7.3f} ms "
              f"({step_ms / floor_ms:5.1f}x the {floor_ms:.3f} ms traffic floor), max |diff| vs eager {error:.2e}")
    pamr_kernel.BLOCK_PIXELS, pamr_kernel.BLOCK_CLASSES, pamr_kernel.CLASS_BLOCKS_FASTEST = default_blocks
    report = {"settings": vars(args), "copy_bandwidth_gbs": bandwidth, "step_bytes": step_bytes, "results": rows,
              "device": device_name(device),
              "torch": torch.__version__}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
