#!/usr/bin/env python
"""What one training sample costs a loader worker: ``CaptionTrainMapper`` over a dataset's records.

The mapper is all a worker does per sample (image read and decode, resize, crop, flip,
tokenisation, and with TTD the candidate tags); the packed collator's stacking is not included.
The mapper is built from ``--config-file`` as the trainer builds it, called on ``--warmup``
records, then timed over the first ``--samples`` records of the config's first training source (``DATASETS.TRAIN``,
then ``DATASETS.IMAGE_TEXT.FOLDERS``),
``--repeats`` times; the report gives the best and the median pass in ms per sample.
``--cold-cache`` builds a new mapper before every pass (the caption-token cache starts empty, as
in a worker's first epoch); by default the passes share one mapper (a long run's steady state).

The tiny CLIP's pretraining data (render it first, ``tools/generate_synthetic.py``)::

    python benchmarks/bench_mapper.py --config-file configs/synthetic/pretrain_tiny_clip.yaml \\
        --samples 2048 DATASETS.TRAIN "('synth_image_text_train',)"
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_mapper.py` without install
    sys.path.insert(0, str(REPO_ROOT))

from detectron2.data import DatasetCatalog  # noqa: E402

import ttd_d2  # noqa: E402,F401  (registers the datasets)
from ttd_d2 import load_config  # noqa: E402
from ttd_d2.data.datasets.label_conversion import write_text_atomic  # noqa: E402
from ttd_d2.data.mappers import CaptionTrainMapper  # noqa: E402
from ttd_d2.data.records import record_sources  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--samples", type=int, default=2048, help="records timed per pass")
    parser.add_argument("--warmup", type=int, default=200, help="records mapped before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes")
    parser.add_argument("--cold-cache", action="store_true", help="a new mapper (empty caches) per pass")
    parser.add_argument("--output", default="", help="write the report as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Dict:
    cfg = load_config(args.config_file, args.opts)
    names = record_sources(cfg)
    if not names:
        raise SystemExit("no training dataset: set DATASETS.TRAIN or DATASETS.IMAGE_TEXT.FOLDERS")
    name = names[0]
    records = DatasetCatalog.get(name)[: args.samples]
    if not records:
        raise SystemExit(f"{name} has no records: render or prepare it first (datasets/README.md)")
    mapper = CaptionTrainMapper(cfg, True)
    for record in records[: args.warmup]:
        mapper(record)
    passes = []
    for _ in range(args.repeats):
        if args.cold_cache:
            mapper = CaptionTrainMapper(cfg, True)
        start = time.perf_counter()
        for record in records:
            mapper(record)
        passes.append((time.perf_counter() - start) / len(records) * 1e3)
    return {"dataset": name, "samples": len(records), "cold_cache": args.cold_cache,
            "ms_per_sample_best": min(passes), "ms_per_sample_median": statistics.median(passes),
            "ms_per_sample_passes": passes, "config_file": args.config_file, "opts": list(args.opts)}


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    report = run(args)
    print(f"{report['dataset']}: {report['ms_per_sample_best']:.3f} ms per sample (best of {args.repeats}), "
          f"median {report['ms_per_sample_median']:.3f}, {report['samples']} samples"
          + (", cold caches" if args.cold_cache else ""), flush=True)
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
