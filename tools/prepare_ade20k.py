#!/usr/bin/env python
"""Convert the official ADE20K val (150 classes) release into the layout ttd_d2 reads.

Usage: `python tools/prepare_ade20k.py [--root DIR]` (DIR defaults to $DETECTRON2_DATASETS, else
`datasets`). Idempotent: finished files are skipped. Layouts: datasets/README.md and
`ttd_d2/data/datasets/ade20k.py`.
"""
import argparse

from ttd_d2.data.datasets.ade20k import prepare_ade20k_150


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding the datasets (default: $DETECTRON2_DATASETS)")
    print(prepare_ade20k_150(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()
