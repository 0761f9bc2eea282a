#!/usr/bin/env python
"""Convert the official COCO-Stuff-164k val (171 classes) and COCO-Object val (81) release into the layout ttd_d2 reads.

Usage: `python tools/prepare_coco.py [--root DIR]` (DIR defaults to $DETECTRON2_DATASETS, else
`datasets`). Idempotent: finished files are skipped. Layouts: datasets/README.md and
`ttd_d2/data/datasets/coco.py`.
"""
import argparse

from ttd_d2.data.datasets.coco import prepare_coco
from ttd_d2.utils.cli import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding the datasets (default: $DETECTRON2_DATASETS)")
    print(prepare_coco(parser.parse_args(argv).root))


if __name__ == "__main__":
    run_tool(main)  # a missing or corrupt input: its message, no traceback
