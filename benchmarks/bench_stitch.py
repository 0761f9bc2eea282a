"""The window stitching of one pass (``MODEL.SEG_INFERENCE.STITCH_KERNEL``), timed alone.

One pass of the paper's protocol at scale 2 of a 448 x 597 image (896 x 1194, windows 448 /
224: 15 windows of the image and 15 of its flip), 20 classes: the eager path (each window's
maps upsampled, masker, added into the sums: ``stitch_windows``) against the Triton kernel at
several pixel blocks, CUDA events after a warm-up, outputs checked against eager's.

    python3 benchmarks/bench_stitch.py --blocks 256,4 128,8 512,2 --output stitch.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_timing import device_name, time_ms  # noqa: E402
from ttd_d2.modeling.meta_arch.segmentation import padded_size, sliding_windows, stitch_windows  # noqa: E402
from ttd_d2.modeling.stitch_kernel import stitch_windows_triton, synonym_layout  # noqa: E402


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--height", type=int, default=896)
    parser.add_argument("--width", type=int, default=1194)
    parser.add_argument("--crop", type=int, default=448)
    parser.add_argument("--stride", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--images", type=int, default=2, help="images per pass (an image and its flip)")
    parser.add_argument("--blocks", nargs="+", default=["256,4"], help="pixels,classes per program of the kernel")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    size = (args.height, args.width)
    windows = sliding_windows(*size, args.crop, args.stride)
    y0, x0, y1, x1 = windows[0]
    window = (y1 - y0, x1 - x0)
    padded = padded_size(window, args.patch)
    grid = (padded[0] // args.patch, padded[1] // args.patch)
    torch.manual_seed(0)
    maps = torch.rand(len(windows) * args.images, args.classes, *grid, device=device) * 0.6 - 0.3
    masker = torch.tensor([10.0, -2.5], device=device)
    layout = synonym_layout(None, args.classes, args.classes, device)

    def eager():  # the model's eager stitching, all windows at once (window batch 0)
        return stitch_windows(maps, windows, args.images, size, args.patch,
                              lambda full: torch.sigmoid(masker[0] * full + masker[1]))

    reference = eager()
    results = {"eager": {"ms": time_ms(eager, args.repeats, device)}}
    for block in args.blocks:
        pixels, classes = (int(v) for v in block.split(","))

        def fused():
            return stitch_windows_triton(maps, [w[:2] for w in windows], args.images, size, window, padded, layout,
                                         masker, block_pixels=pixels, block_classes=classes)
        diff = (fused() - reference).abs().max().item()
        results[f"triton {block}"] = {"ms": time_ms(fused, args.repeats, device), "max_abs_diff": diff}
    for name, r in results.items():
        extra = f", max |diff| vs eager {r['max_abs_diff']:.2e}" if "max_abs_diff" in r else ""
        print(f"{name:>12}: {r['ms']:8.3f} ms per pass{extra}", flush=True)
    out = {"settings": vars(args), "windows": len(windows), "results": results,
           "device": device_name(device)}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
