#!/usr/bin/env python
"""Throughput of the streamed training loader: samples/s of tar reading + JPEG decoding + resize
and crop to ``--train-size`` + caption tokenisation + candidate tags (``ShardStream`` with
``CaptionTrainMapper`` as the TTD trainer builds it: the work every loader worker does), per
worker process, and for ``--workers`` workers through a DataLoader with the trainer's collator.

It first writes ``--shards`` shards of ``--per-shard`` random JPEGs of ``--height`` x ``--width``
(CC3M's images as img2dataset writes them with ``--image_size 512 --resize_mode keep_ratio`` are
about 512 on the long side; random pixels compress worse than photos, so decoding costs at least
as much) under ``--root``, then times ``--samples`` samples after ``--warmup``.

    python benchmarks/bench_stream_loader.py --workers 0 2      # this machine: one process, then 2 workers
    python benchmarks/bench_stream_loader.py --workers 15 --samples 20000 --collate trivial packed  # GPU host
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ttd_d2.data.datasets.label_conversion import write_text_atomic  # noqa: E402

CAPTION_WORDS = ("a", "photo", "of", "red", "dog", "running", "on", "the", "beach", "near", "blue", "house", "with")


def write_shards(root: Path, shards: int, per_shard: int, height: int, width: int, quality: int = 90) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (7, 7), 0)  # photo-like
    for s in range(shards):
        path = root / f"{s:05d}.tar"
        if path.is_file():
            continue
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                image = np.roll(base, shift=(s * per_shard + i) * 7, axis=1)
                members = {"jpg": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes(),
                           "txt": " ".join(rng.choice(CAPTION_WORDS, 12)).encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{s:05d}{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="output/bench_stream_shards")
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=200)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=448)
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip model whose tokenizer the mapper uses")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="loader workers (0 = this process)")
    parser.add_argument("--no-tags", action="store_true",
                        help="no candidate tags (TTD off; every run before 2026-12-02's tag extraction)")
    parser.add_argument("--collate", nargs="+", choices=("packed", "trivial"), default=["packed"],
                        help="packed: ttd_d2's packed_batch_collator (the trainer's); trivial: detectron2's")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--output")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    from detectron2.data.build import trivial_batch_collator

    from ttd_d2.data.collate import packed_batch_collator, stack_field
    from ttd_d2.data.mappers import CaptionTrainMapper
    from ttd_d2.data.streams import ShardStream, expand_shards
    from ttd_d2.modeling.backbone.clip_loading import build_tokenizer

    root = write_shards(Path(args.root), args.shards, args.per_shard, args.height, args.width)
    # the TTD trainer's mapper: tokens and candidate tags (MODEL.TTD defaults) made in the workers
    mapper = CaptionTrainMapper(train_size=args.train_size, tokenizer=build_tokenizer(args.arch),
                                tag_options=None if args.no_tags else (True, 32))
    shards = expand_shards(str(root / "*.tar"))
    collators = {"packed": packed_batch_collator, "trivial": trivial_batch_collator}
    results = {}
    for collate in args.collate:
        for workers in args.workers:
            stream = ShardStream(shards, mapper, shuffle_buffer=1000)
            loader = torch.utils.data.DataLoader(stream, batch_size=args.batch_size, num_workers=workers,
                                                 collate_fn=collators[collate])
            it = iter(loader)
            for _ in range(max(1, args.warmup // args.batch_size)):
                next(it)
            start, seen = time.perf_counter(), 0
            while seen < args.samples:  # the main process's part of a step: the batch as one tensor
                seen += len(stack_field(next(it), "image"))
            elapsed = time.perf_counter() - start
            del it
            rate = seen / elapsed
            key = str(workers) if len(args.collate) == 1 else f"{collate}/{workers}"
            results[key] = {"samples_per_s": rate, "per_process": rate / max(1, workers), "collate": collate}
            print(f"{collate}, {workers} workers: {rate:.1f} samples/s ({rate / max(1, workers):.1f} per process)",
                  flush=True)
    report = {"settings": vars(args), "cpu_count": os.cpu_count(), "results": results}
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
