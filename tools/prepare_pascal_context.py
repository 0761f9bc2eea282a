#!/usr/bin/env python
"""Convert the official PASCAL Context val (459, 59 and 60 classes) release into the layout ttd_d2 reads.

Usage: `python tools/prepare_pascal_context.py [--root DIR]` (DIR defaults to $DETECTRON2_DATASETS, else
`datasets`). Idempotent: finished files are skipped. Layouts: datasets/README.md and
`ttd_d2/data/datasets/pascal_context.py`.
"""
import argparse

from ttd_d2.data.datasets.pascal_context import prepare_pascal_context
from ttd_d2.utils.cli import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding the datasets (default: $DETECTRON2_DATASETS)")
    print(prepare_pascal_context(parser.parse_args(argv).root))


if __name__ == "__main__":
    run_tool(main)  # a missing or corrupt input: its message, no traceback
