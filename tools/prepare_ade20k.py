#!/usr/bin/env python
"""Convert the official ADE20K releases into the layout ttd_d2 reads: ADEChallengeData2016
(150 classes) and, with --full-classes, ADE20K_2021_17_01 (847 classes).

Usage: `python tools/prepare_ade20k.py [--root DIR] [--full-classes FILE]` (DIR defaults to
$DETECTRON2_DATASETS, else `datasets`; FILE lists the 847 benchmark classes, one
index_ade20k.pkl objectnames entry a line). Idempotent: finished files are skipped. Layouts:
datasets/README.md and `ttd_d2/data/datasets/ade20k.py`.
"""
import argparse
from pathlib import Path

from ttd_d2.data.datasets.ade20k import prepare_ade20k_150, prepare_ade20k_847
from ttd_d2.data.datasets.benchmark import datasets_root
from ttd_d2.utils.cli import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding the datasets (default: $DETECTRON2_DATASETS)")
    parser.add_argument("--full-classes", default=None, help="the 847-class selection; converts ADE20K_2021_17_01")
    args = parser.parse_args(argv)
    if (datasets_root(args.root) / "ADEChallengeData2016").is_dir() or args.full_classes is None:
        print(prepare_ade20k_150(args.root))
    if args.full_classes is not None:
        print(prepare_ade20k_847(Path(args.full_classes), args.root))


if __name__ == "__main__":
    run_tool(main)  # a missing or corrupt input: its message, no traceback
