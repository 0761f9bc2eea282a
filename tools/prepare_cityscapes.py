#!/usr/bin/env python
"""Convert the official Cityscapes val (19 classes) release into the layout ttd_d2 reads.

Usage: `python tools/prepare_cityscapes.py [--root DIR]` (DIR defaults to $DETECTRON2_DATASETS, else
`datasets`). Idempotent: finished files are skipped. Layouts: datasets/README.md and
`ttd_d2/data/datasets/cityscapes.py`.
"""
import argparse

from ttd_d2.data.datasets.cityscapes import prepare_cityscapes
from ttd_d2.utils.cli import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding the datasets (default: $DETECTRON2_DATASETS)")
    print(prepare_cityscapes(parser.parse_args(argv).root))


if __name__ == "__main__":
    run_tool(main)  # a missing or corrupt input: its message, no traceback
