#!/usr/bin/env python
"""Evaluation throughput of the test-time protocol, part by part, against its FLOP floor.

One model is built per protocol setting, each adding one part of the paper's protocol
(docs/EVALUATION.md) to the previous one:

1. ``single``: the whole image, one pass;
2. ``+slide``: sliding windows (``--crop`` / ``--stride``);
3. ``+scales``: the four scales 1.0 0.5 1.5 2.0;
4. ``+flip``: and their horizontal flips;
5. ``+pamr``: PAMR (10 iterations, dilations 1 2 4 8 12 24): the full protocol.

Each runs ``TTD`` inference (``model([{"image", "dataset_name", "height", "width"}])``, the path of
``--eval-only``) on random uint8 images of ``--height`` x ``--width`` already resized to the test
short side and already on the device (data loading is not measured), for a dataset of
``--classes`` names with a background class. After ``--warmup`` images, ``--images`` are timed
between two synchronisations. FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one image
(matrix products, convolutions and attention as executed); the **floor** is those FLOPs at the
device's measured dense matmul rate (bf16 on CUDA, fp32 on CPU; ``--matmul-size``), and the
ratio measured time / floor is the target of issue 9 (within 2x).

GPU host (one H200; random ViT-B/16 weights: the cost does not depend on them; QuickGELU, as
OpenAI's weights are built, unless ``--arch`` says otherwise)::

    python benchmarks/bench_eval_protocol.py --output output/bench_eval_protocol.json

CPU smoke run (tiny model)::

    python benchmarks/bench_eval_protocol.py --arch tests/fixtures/tiny_clip.json --height 32 --width 40 \\
        --crop 32 --stride 16 --images 1 --warmup 0 --device cpu --matmul-size 256
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_eval_protocol.py` without install
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.bench_timing import bench_dtype, device_name  # noqa: E402
from ttd_d2.data.datasets.label_conversion import write_text_atomic  # noqa: E402
from ttd_d2.modeling.kernel_choice import KERNELS  # noqa: E402
from ttd_d2.modeling.pamr import PAMR_KERNELS  # noqa: E402
from tabulate import tabulate  # noqa: E402

FULL_SCALES = [1.0, 0.5, 1.5, 2.0]
PAMR_DILATIONS = [1, 2, 4, 8, 12, 24]


def protocol_settings(crop: int, stride: int) -> Dict[str, List]:
    """Cumulative overrides of ``MODEL.SEG_INFERENCE``, one setting per part of the protocol."""
    steps = [
        ("single", []),
        ("+slide", ["MODEL.SEG_INFERENCE.SLIDE_CROP", crop, "MODEL.SEG_INFERENCE.SLIDE_STRIDE", stride]),
        ("+scales", ["MODEL.SEG_INFERENCE.SCALES", FULL_SCALES]),
        ("+flip", ["MODEL.SEG_INFERENCE.FLIP", True]),
        ("+pamr", ["MODEL.SEG_INFERENCE.PAMR.NUM_ITER", 10, "MODEL.SEG_INFERENCE.PAMR.DILATIONS", PAMR_DILATIONS]),
    ]
    settings, opts = {}, []
    for name, extra in steps:
        opts = opts + extra
        settings[name] = list(opts)
    return settings


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/Base-Paper-Eval.yaml")
    parser.add_argument("--arch", default="ViT-B-16-quickgelu",
                        help="open_clip model name or JSON config (default: ViT-B/16 with QuickGELU, the "
                             "activation of OpenAI's weights, which configs/ load)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--height", type=int, default=448, help="image height after the test resize (short side)")
    parser.add_argument("--width", type=int, default=597, help="image width (448 x 597: a 500 x 375 VOC image)")
    parser.add_argument("--crop", type=int, default=448)
    parser.add_argument("--stride", type=int, default=224)
    parser.add_argument("--window-batch", type=int, help="MODEL.SEG_INFERENCE.WINDOW_BATCH (default: the config's)")
    parser.add_argument("--classes", type=int, default=20, help="class names besides the background")
    parser.add_argument("--images", type=int, default=10, help="timed images per setting")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--matmul-size", type=int, default=8192, help="side of the square matmul timed for the rate")
    parser.add_argument("--settings", nargs="+", help="only these settings (default: all five)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N images of each setting (ttd_d2.utils.profiling)")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per profile")
    parser.add_argument("--compile", default="", metavar="MODE",
                        help="MODEL.CLIP.COMPILE.MODE (e.g. reduce-overhead: CUDA graphs); the warm-up compiles")
    parser.add_argument("--pamr-kernel", default="auto", choices=PAMR_KERNELS, help="MODEL.SEG_INFERENCE.PAMR.KERNEL")
    parser.add_argument("--stitch-kernel", default="auto", choices=KERNELS, help="MODEL.SEG_INFERENCE.STITCH_KERNEL")
    parser.add_argument("--output", help="also write the results as JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides of every setting, KEY VALUE ..., after the options (not right after "
                        "--settings): e.g. configs/tcl.yaml's MODEL.TCL.WEIGHTS \"\"")
    return parser.parse_args(argv)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, n: int, repeats: int = 10) -> float:
    """Measured dense matmul rate (TFLOP/s): bf16 on CUDA, fp32 on CPU."""
    dtype = bench_dtype(device)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


def build(args: argparse.Namespace, opts: List):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ttd_d2 import add_ttd_config
    from ttd_d2.config_loading import merge_config_file, merge_config_opts

    cfg = get_cfg()
    add_ttd_config(cfg)
    merge_config_file(cfg, str(REPO_ROOT / args.config_file) if not Path(args.config_file).is_file() else args.config_file)
    arch = args.arch if not args.arch.endswith(".json") or Path(args.arch).is_file() else str(REPO_ROOT / args.arch)
    merge_config_opts(cfg, ["MODEL.CLIP.ARCH", arch, "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", args.device,
                         "MODEL.SEG_INFERENCE.SLIDE_CROP", 0, "MODEL.SEG_INFERENCE.SCALES", [1.0],
                         "MODEL.SEG_INFERENCE.FLIP", False, "MODEL.SEG_INFERENCE.PAMR.NUM_ITER", 0, *opts,
                         *args.opts])
    if args.window_batch is not None:
        cfg.merge_from_list(["MODEL.SEG_INFERENCE.WINDOW_BATCH", args.window_batch])
    if args.compile:
        cfg.merge_from_list(["MODEL.CLIP.COMPILE.MODE", args.compile])
    cfg.merge_from_list(["MODEL.SEG_INFERENCE.PAMR.KERNEL", args.pamr_kernel])
    cfg.merge_from_list(["MODEL.SEG_INFERENCE.STITCH_KERNEL", args.stitch_kernel])
    cfg.freeze()
    return build_model(cfg).eval()


def register_dataset(classes: int) -> str:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = f"bench_eval_protocol_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(stuff_classes=["background"] + [f"object {i}" for i in range(classes)],
                                  background_threshold=0.4, ignore_label=255)
    return name


def measure(model, inputs: List[Dict], warmup: int, device: torch.device) -> Dict:
    from ttd_d2.utils.analysis import executed_flop_counter

    with torch.no_grad():
        for x in inputs[:max(1, warmup)]:
            model([x])
        # counted eagerly: a compiled function met under a dispatch mode (the FLOP counter) must not
        # change what the timed loop runs (set_stance: torch >= 2.6)
        set_stance = getattr(torch.compiler, "set_stance", None)
        eager = set_stance("force_eager") if set_stance else contextlib.nullcontext()
        with eager, executed_flop_counter() as counter:
            model([inputs[0]])
        flops = float(counter.get_total_flops())
        attention_flops = float(sum(v for op, v in counter.get_flop_counts().get("Global", {}).items()
                                    if "attention" in str(op)))
        timed = inputs[warmup:] if len(inputs) > warmup else inputs
        _synchronize(device)
        start = time.perf_counter()
        for x in timed:
            out = model([x])[0]["sem_seg"]
        _synchronize(device)
        elapsed = time.perf_counter() - start
    return {"images_per_s": len(timed) / elapsed, "ms_per_image": 1e3 * elapsed / len(timed),
            "gflop_per_image": flops / 1e9, "attention_gflop_per_image": attention_flops / 1e9,
            "output_shape": list(out.shape)}


def achieved_rates(result: Dict) -> Dict[str, float]:
    """TFLOP/s the profiled image's matrix-product and attention kernels ran at: their FLOPs
    (``measure``) over their device time (``profile.categories``, one image per profiled step)."""
    categories = result.get("profile", {}).get("categories", {})
    attention = result["attention_gflop_per_image"]
    rates = {}
    if categories.get("matmul"):
        rates["matmul"] = (result["gflop_per_image"] - attention) / categories["matmul"]  # GFLOP / ms = TFLOP/s
    if categories.get("attention"):
        rates["attention"] = attention / categories["attention"]
    return rates


def compiled_regions_per_image(model, x: Dict) -> float:
    """How many ``torch.compile`` regions one image's inference runs (0 = everything eager):
    the evidence that ``--compile`` took effect in the timed loop, since
    inside this benchmark on the GPU host PAMR once ran its eager kernels with no fallback logged
    (benchmarks/README.md, 2026-12-03)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model([x])
    return float(sum(e.count for e in prof.key_averages() if e.key.startswith("Torch-Compiled Region")))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    dataset = register_dataset(args.classes)
    inputs = [{"image": torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8, device=device),
               "dataset_name": dataset, "height": args.height, "width": args.width}
              for _ in range(args.images + args.warmup)]
    rate = matmul_tflops(device, args.matmul_size)
    results, model_window_batch = {}, None
    for name, opts in protocol_settings(args.crop, args.stride).items():
        if args.settings and name not in args.settings:
            continue
        model = build(args, opts)
        model_window_batch = model.window_batch
        r = measure(model, inputs, args.warmup, device)
        if args.compile:
            r["compiled_regions_per_image"] = compiled_regions_per_image(model, inputs[0])
        if args.profile:
            from ttd_d2.utils.profiling import profile_steps

            images = iter(range(args.profile))
            with torch.no_grad():
                profiled = profile_steps(lambda: model([inputs[next(images) % len(inputs)]]), args.profile, device,
                                         top=args.top)
            r["profile"] = profiled.to_dict()
            r["achieved_tflops"] = achieved_rates(r)
            print(f"[{name}] " + profiled.table(), flush=True)
            print(f"[{name}] achieved TFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in r["achieved_tflops"].items()),
                  flush=True)
        r["floor_ms_per_image"] = r["gflop_per_image"] / rate  # GFLOP / (TFLOP/s) = ms
        r["times_floor"] = r["ms_per_image"] / r["floor_ms_per_image"]
        results[name] = r
        compiled = (f", {r['compiled_regions_per_image']:.0f} compiled regions per image"
                    if "compiled_regions_per_image" in r else "")
        print(f"{name}: {r['images_per_s']:.2f} img/s, {r['gflop_per_image']:.1f} GFLOP/img, "
              f"{r['times_floor']:.2f}x the floor{compiled}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows = [[n, r["images_per_s"], r["ms_per_image"], r["gflop_per_image"], r["floor_ms_per_image"], r["times_floor"]]
            for n, r in results.items()]
    print(tabulate(rows, headers=["setting", "img/s", "ms/img", "GFLOP/img", "floor ms/img", "x floor"],
                   tablefmt="pipe", floatfmt=".2f"))
    print(f"matmul rate: {rate:.1f} TFLOP/s ({'bf16' if device.type == 'cuda' else 'fp32'}, n={args.matmul_size})")
    report = {"settings": vars(args), "window_batch": model_window_batch, "matmul_tflops": rate, "results": results,
              "device": device_name(device)}
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
