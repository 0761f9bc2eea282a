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
from ttd_d2.data.synthetic.writer import LAYOUTS, TRAINING_SINGLE_OBJECT_RADIUS, generate, is_complete

logger = logging.getLogger("generate_synthetic")


def parse_args(argv=None):
    default_root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "synthetic"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=default_root, help=f"dataset root (default {default_root})")
    parser.add_argument("--preset", choices=["quickstart"], help="generate every split of a preset")
    parser.add_argument("--layout", choices=[*LAYOUTS, "all"], default="all", help="layout of --split")
    parser.add_argument("--split", help="split name (without --preset)")
    parser.add_argument("--seed", type=int, help="split seed (without --preset)")
    parser.add_argument("--num-images", type=int, default=300, help="images of --split")
    parser.add_argument("--image-size", type=int, default=BENCHMARK_IMAGE_SIZE,
                        help=f"image side, pixels (default {BENCHMARK_IMAGE_SIZE}: the benchmark's, as its configs read it)")
    parser.add_argument("--train-images", type=int, default=20000, help="quickstart: image_text/train size")
    parser.add_argument("--val-images", type=int, default=200, help="quickstart: each val split's size")
    parser.add_argument("--test-images", type=int, default=300, help="quickstart: each test split's size")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    low, high = TRAINING_SINGLE_OBJECT_RADIUS
    parser.add_argument("--single-object-radius", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="image_text only: radius range (fraction of the width) of one-object scenes "
                             f"(default {low:g} {high:g}; 0.23 0.30 = the evaluation scenes' range, generator version 1's)")
    parser.add_argument("--caption-noise", type=float, nargs=2, metavar=("OMIT", "REPLACE"), default=(0.3, 0.3),
                        help="image_text only: probabilities that a training caption omits a secondary object, or "
                             "names an absent class in its place (default 0.3 0.3)")
    parser.add_argument("--overwrite", action="store_true", help="replace splits generated with other parameters")
    args = parser.parse_args(argv)
    if args.preset is None and (args.split is None or args.seed is None):
        parser.error("give --preset, or --split and --seed")
    if args.single_object_radius is not None:
        try:
            resolve_single_object_radius("image_text", tuple(args.single_object_radius))
        except ValueError as e:
            parser.error(f"--single-object-radius: {e}")
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
    sys.exit(main())
