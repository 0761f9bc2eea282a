#!/usr/bin/env python
"""Sample-level pruning of image-text shards, as the TTD authors prune CC3M / CC12M: score every
pair by the base model's image-caption cosine similarity, then keep the pairs at or above a
threshold. Writes a keep-list for ``DATASETS.IMAGE_TEXT.KEEP_LISTS`` (docs/DATASETS.md).

    python tools/prune_samples.py --config-file configs/maskclip.yaml --shards "$DETECTRON2_DATASETS/cc3m/*.tar" \\
        --output-dir output/prune_cc3m --keep-fraction 0.8 --num-gpus 8
    # then: DATASETS.IMAGE_TEXT.KEEP_LISTS "['output/prune_cc3m/keep_list.json']"

Each shard's scores go to ``<output-dir>/scores/<shard>.json`` when the shard is done (written
atomically, with the shard's size and modification time), shards split over the processes; a
restart skips the shards already scored, so an interrupted run resumes, and scores again a shard
that was replaced since (another size or time) or that failed (``shard_error``: unreadable from
some point on). Bad samples (``ttd_d2.data.streams.BAD_KINDS``) are not scored and
never kept; the keep-list JSON records the threshold, the score histogram and the counts.
Images are resized (short side ``INPUT.TRAIN_SIZE``) and centre-cropped, as CLIP evaluates.
"""
import argparse
import json
import logging
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from detectron2.engine import launch
from detectron2.utils import comm
from tqdm import tqdm
from webdataset.tariterators import tarfile_samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ttd_d2  # noqa: F401,E402  (registers the backbones and datasets)
from ttd_d2 import TTDTrainer, load_config  # noqa: E402
from ttd_d2.data.datasets.label_conversion import write_text_atomic  # noqa: E402
from ttd_d2.data.image_io import read_image_checked  # noqa: E402
from ttd_d2.data.streams import expand_shards, sample_to_record  # noqa: E402
from ttd_d2.utils.cli import require_minimums, require_output_folder, run_tool  # noqa: E402

logger = logging.getLogger("prune_samples")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the base model's config (its MODEL.* keys are used)")
    parser.add_argument("--shards", nargs="+", required=True, help="brace / glob patterns of the tar shards")
    parser.add_argument("--output-dir", required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--threshold", type=float, help="keep pairs whose cosine similarity is at least this")
    group.add_argument("--keep-fraction", type=float, help="keep this fraction of the scored pairs (highest first)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = parser.parse_args(argv)
    if args.keep_fraction is not None and not 0 < args.keep_fraction <= 1:
        parser.error("--keep-fraction must be in (0, 1]")
    if args.threshold is not None and not math.isfinite(args.threshold):
        parser.error(f"--threshold {args.threshold}: must be a finite cosine similarity, e.g. 0.2")
    require_minimums(parser, args, {"batch_size": 1, "num_gpus": 1})
    if args.num_gpus > 1 and args.num_gpus > torch.cuda.device_count():
        parser.error(f"--num-gpus {args.num_gpus}: one process per CUDA device, and this machine has {torch.cuda.device_count()}")
    require_output_folder(parser, "--output-dir", args.output_dir)
    try:  # every rank gets this one list, checked before anything is written
        args.shard_paths = expand_shards(args.shards)
    except FileNotFoundError as e:
        parser.error(f"--shards: {e}")
    names = Counter(score_file(Path(args.output_dir), s).name for s in args.shard_paths)
    if len(names) < len(args.shard_paths):
        parser.error(f"--shards: shards of several folders share file names ({', '.join(n for n, c in names.items() if c > 1)[:200]}): "
                     "prune each source on its own (one keep-list per source, DATASETS.IMAGE_TEXT.KEEP_LISTS)")
    return args


def score_file(output_dir: Path, shard: str) -> Path:
    return output_dir / "scores" / (Path(shard).stem + ".json")


def shard_stamp(shard: str) -> Optional[Dict]:
    """The size and modification time of a local shard (None for ``pipe:`` and URLs)."""
    if "://" in shard or shard.startswith("pipe:"):
        return None
    stat = os.stat(shard)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def already_scored(output_dir: Path, shard: str) -> bool:
    """Whether ``shard``'s score file is there, of this very shard (its stamp) and complete
    (no ``shard_error``: a shard that failed is scored again, e.g. once replaced by a good copy)."""
    try:
        result = json.loads(score_file(output_dir, shard).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return result.get("stamp") == shard_stamp(shard) and not result["skipped"].get("shard_error")


class PairScorer:
    """Cosine similarity of the base model's global image embedding and caption embedding."""

    def __init__(self, cfg):
        # Weights a checkpoint does not set (all of them with PRETRAINED "") are drawn from SEED
        # (0 when random), alike on every process, so that every shard is scored by one model.
        torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
        self.model = TTDTrainer.build_model(cfg).eval()
        size = cfg.INPUT.TRAIN_SIZE
        self.resize, self.size, self.format = T.ResizeShortestEdge(size, sys.maxsize), size, cfg.INPUT.FORMAT

    def image(self, record: Dict) -> torch.Tensor:
        image = read_image_checked(record["file_name"], self.format, record["image_bytes"])
        image = self.resize.get_transform(image).apply_image(image)
        h, w = image.shape[:2]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return torch.as_tensor(np.ascontiguousarray(image[top:top + self.size, left:left + self.size].transpose(2, 0, 1)))

    @torch.no_grad()
    def __call__(self, images: List[torch.Tensor], captions: List[str]) -> List[float]:
        model = self.model
        image_emb = model.backbone(model.normalize(torch.stack(images)), with_global=True)["global"]
        text_emb = model.backbone.encode_text(captions)
        return (F.normalize(image_emb.float(), dim=-1) * F.normalize(text_emb.float(), dim=-1)).sum(-1).tolist()


def score_shard(scorer: PairScorer, shard: str, batch_size: int) -> Dict:
    """{"shard", "scores": {key: cosine}, "skipped": {kind: count}, "stamp": shard_stamp(shard)} of one shard."""
    scores, skipped, batch = {}, Counter(), []
    errors, stamp = [], shard_stamp(shard)  # before reading: a shard replaced meanwhile is scored again

    def flush():
        if batch:
            for (key, _, _), score in zip(batch, scorer([b[1] for b in batch], [b[2] for b in batch])):
                scores[key] = score
            batch.clear()

    for sample in tarfile_samples([{"url": shard}], handler=lambda exn: errors.append(exn) or True):
        record, problem = sample_to_record(sample)
        if problem is None:
            try:
                batch.append((record["key"], scorer.image(record), record["caption"]))
            except OSError:
                problem = "corrupt_image"
        if problem is not None:
            skipped[problem] += 1
        if len(batch) >= batch_size:
            flush()
    flush()
    if errors:
        skipped["shard_error"] += 1
        logger.warning("%s is unreadable from some point on (%s); its remaining samples are not scored", shard, errors[0])
    return {"shard": shard, "scores": scores, "skipped": dict(skipped), "stamp": stamp}


def keep_list(results: List[Dict], threshold: Optional[float], keep_fraction: Optional[float]) -> Dict:
    scores = {k: v for r in results for k, v in r["scores"].items()}
    values = np.array(sorted(scores.values()), dtype=np.float64)
    if not len(values):
        raise SystemExit("no sample could be scored: check the shards (see the warnings above)")
    if threshold is None:  # the score of the last pair kept, highest first
        threshold = float(values[len(values) - max(1, int(round(keep_fraction * len(values))))])
    kept = sorted(k for k, v in scores.items() if v >= threshold)
    counts, edges = np.histogram(values, bins=20)
    skipped = Counter()
    for r in results:
        skipped.update(r["skipped"])
    return {"keys": kept, "threshold": threshold, "num_scored": len(scores), "num_kept": len(kept),
            "skipped": dict(skipped), "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}}


def main(args) -> Optional[Dict]:
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.TTD.ENABLED = False  # the base model
    cfg.freeze()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output_dir, shards = Path(args.output_dir), args.shard_paths
    (output_dir / "scores").mkdir(parents=True, exist_ok=True)
    mine = [s for i, s in enumerate(shards) if i % comm.get_world_size() == comm.get_rank()]
    todo = [s for s in mine if not already_scored(output_dir, s)]
    if len(todo) < len(mine):
        logger.info("rank %d: %d of its %d shards already scored, skipped", comm.get_rank(), len(mine) - len(todo), len(mine))
    if todo:
        scorer = PairScorer(cfg)
        for shard in tqdm(todo, desc=f"scoring (rank {comm.get_rank()})", unit="shard", disable=not comm.is_main_process()):
            write_text_atomic(score_file(output_dir, shard), json.dumps(score_shard(scorer, shard, args.batch_size)))
    comm.synchronize()
    if not comm.is_main_process():
        return None
    results = [json.loads(score_file(output_dir, s).read_text(encoding="utf-8")) for s in shards]
    report = keep_list(results, args.threshold, args.keep_fraction)
    write_text_atomic(output_dir / "keep_list.json", json.dumps(report))
    logger.info("kept %d of %d scored pairs (cosine >= %.4f); not scored: %s; keep-list: %s", report["num_kept"],
                report["num_scored"], report["threshold"], report["skipped"] or "none", output_dir / "keep_list.json")
    return report


def launch_main(args) -> None:
    """``main`` in ``--num-gpus`` processes, which meet on a free local port (``launch``'s default,
    env://, needs MASTER_ADDR and MASTER_PORT set)."""
    launch(main, args.num_gpus, dist_url="auto", args=(args,))


if __name__ == "__main__":
    run_tool(launch_main, parse_args())  # a missing or corrupt input: its message, no traceback (in one process)
