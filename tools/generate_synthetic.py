#!/usr/bin/env python
"""Generate the synthetic shapes benchmark (layouts and seed map: ttd_d2/data/synthetic/writer.py).

    # every split the quickstart needs, under $DETECTRON2_DATASETS/synthetic (default datasets/synthetic)
    python tools/generate_synthetic.py --preset quickstart
    # one split of one layout (or of all three: --layout all)
    python tools/generate_synthetic.py --layout captions --split test103 --seed 103 --num-images 300
    # training scenes whose single objects keep the evaluation scenes' radius (generator version 1's)
    python tools/generate_synthetic.py --layout image_text --split pretrain --seed 0 --num-images 20000 \
        --single-object-radius 0.23 0.30
    # training captions that name every secondary object correctly (the caption-statistics lever)
    python tools/generate_synthetic.py --layout image_text --split train_clean --seed 8 --num-images 20000 \
        --caption-noise 0 0

A split already complete with the same parameters is skipped, one written by an older generator
version is regenerated; splits are written to a hidden temporary folder and renamed into place,
so an interrupted run leaves nothing half-written.
"""
import argparse
import logging
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ttd_d2.data.synthetic.meta import resolve_single_object_radius
from ttd_d2.data.synthetic.presets import BENCHMARK_IMAGE_SIZE, SplitSpec, quickstart_splits
from ttd_d2.data.synthetic.render import MIN_IMAGE_SIZE
from ttd_d2.data.synthetic.writer import LAYOUTS, TRAINING_SINGLE_OBJECT_RADIUS, generate, is_complete
from ttd_d2.utils.cli import require_minimums, require_output_folder, run_tool

logger = logging.getLogger("generate_synthetic")

PRESET_SIZES = ("train_images", "val_images", "test_images")  # options of --preset only
SPLIT_OPTIONS = ("layout", "split", "seed", "num_images")  # options of one split only
TRAINING_ONLY = ("caption_noise", "single_object_radius")  # options of the image_text layout only
# None until given, to tell what was given
DEFAULTS = {"layout": "all", "num_images": 300, "train_images": 20000, "val_images": 200, "test_images": 300,
            "caption_noise": (0.3, 0.3)}


def parse_args(argv=None):
    default_root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "synthetic"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=default_root, help=f"dataset root (default {default_root})")
    parser.add_argument("--preset", choices=["quickstart"], help="generate every split of a preset")
    parser.add_argument("--layout", choices=[*LAYOUTS, "all"], help="layout of --split (default all)")
    parser.add_argument("--split", help="split name (without --preset)")
    parser.add_argument("--seed", type=int, help="split seed, >= 0 (without --preset)")
    parser.add_argument("--num-images", type=int, help="images of --split (default 300)")
    parser.add_argument("--image-size", type=int, default=BENCHMARK_IMAGE_SIZE,
                        help=f"image side, pixels, >= {MIN_IMAGE_SIZE} (default {BENCHMARK_IMAGE_SIZE}: the "
                             "benchmark's, as its configs read it)")
    parser.add_argument("--train-images", type=int, help="quickstart: image_text/train size (default 20000)")
    parser.add_argument("--val-images", type=int, help="quickstart: each val split's size (default 200)")
    parser.add_argument("--test-images", type=int, help="quickstart: each test split's size (default 300)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="rendering processes (0 or 1: this process)")
    low, high = TRAINING_SINGLE_OBJECT_RADIUS
    parser.add_argument("--single-object-radius", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="image_text only: radius range (fraction of the width) of one-object scenes "
                             f"(default {low:g} {high:g}; 0.23 0.30 = the evaluation scenes' range, generator version 1's)")
    parser.add_argument("--caption-noise", type=float, nargs=2, metavar=("OMIT", "REPLACE"),
                        help="image_text only: probabilities that a training caption omits a secondary object, or "
                             "names an absent class in its place (default 0.3 0.3)")
    parser.add_argument("--overwrite", action="store_true", help="replace splits generated with other parameters")
    args = parser.parse_args(argv)

    def given(names):
        return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]

    if args.preset is not None and given(SPLIT_OPTIONS):
        parser.error(f"--preset {args.preset} generates its own splits: drop {' '.join(given(SPLIT_OPTIONS))}, "
                     "or drop --preset to generate one split")
    if args.preset is None and given(PRESET_SIZES):
        parser.error(f"{' '.join(given(PRESET_SIZES))}: --preset only (the sizes of its splits): give --num-images for --split")
    if args.preset is None and (args.split is None or args.seed is None):
        parser.error("give --preset, or --split and --seed")
    if args.layout in ("semseg", "captions") and given(TRAINING_ONLY):
        parser.error(f"{' '.join(given(TRAINING_ONLY))}: image_text layout only (its training captions and one-object "
                     f"scenes), not --layout {args.layout}: drop it, or give --layout image_text or all")
    require_minimums(parser, args, {"seed": 0, "num_images": 1, **dict.fromkeys(PRESET_SIZES, 1), "workers": 0})
    if args.image_size < MIN_IMAGE_SIZE:
        parser.error(f"--image-size {args.image_size}: must be at least {MIN_IMAGE_SIZE} (smaller scenes lose their "
                     f"objects; the benchmark draws {BENCHMARK_IMAGE_SIZE})")
    require_output_folder(parser, "--root", args.root)
    if args.single_object_radius is not None:
        try:
            resolve_single_object_radius("image_text", tuple(args.single_object_radius))
        except ValueError as e:
            parser.error(f"--single-object-radius: {e}")
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    omit, replace = args.caption_noise
    if omit < 0.0 or replace < 0.0 or omit + replace > 1.0:
        parser.error(f"--caption-noise: need OMIT, REPLACE >= 0 with OMIT + REPLACE <= 1, got {omit:g} {replace:g}")
    return args


def requested_splits(args):
    if args.preset == "quickstart":
        return quickstart_splits(args.train_images, args.val_images, args.test_images)
    layouts = LAYOUTS if args.layout == "all" else (args.layout,)
    return tuple(SplitSpec(layout, args.split, args.seed, args.num_images) for layout in layouts)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    for spec in requested_splits(args):
        label = f"{spec.layout}/{spec.split}"
        radius = tuple(args.single_object_radius) if args.single_object_radius and spec.layout == "image_text" else None
        omit, replace = args.caption_noise
        if is_complete(args.root, spec.layout, spec.split, spec.num_images, spec.seed, args.image_size,
                       omit, replace, single_object_radius=radius):
            logger.info("%s: complete, skipped", label)
            continue
        with tqdm(total=spec.num_images, desc=label, unit="img", leave=False) as bar:
            folder = generate(
                args.root, spec.layout, spec.split, spec.num_images, spec.seed, args.image_size,
                workers=args.workers, overwrite=args.overwrite, progress=bar.update, single_object_radius=radius,
                omit_prob=omit, replace_prob=replace,
            )
        logger.info("%s: %d images (seed %d) -> %s", label, spec.num_images, spec.seed, folder)
    logger.info("done in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))  # a missing or corrupt input, a split made with other parameters: its message
