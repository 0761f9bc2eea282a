#!/usr/bin/env python
"""The trainer's own iteration, timed and profiled: what ``tools/train_net.py`` runs per step.

``bench_ttd_step.py`` times the model's step on batches already on the device; this one builds
``TTDTrainer`` from a config exactly as ``tools/train_net.py`` does (its data loader and
workers, detectron2's ``SimpleTrainer.run_step`` with its metric writing, every hook) and runs
its iterations (``before_step``, ``run_step``, ``after_step``). After ``--warmup`` iterations,
``--steps`` are timed between two synchronisations; the report gives seconds per iteration,
images per second (``SOLVER.IMS_PER_BATCH`` per iteration), the mean time the step waited for
its batch (detectron2's ``data_time``) and, with ``--profile N``, the profile of N more
iterations (``ttd_d2.utils.profiling``: device busy, host gaps, syncs, top kernels, host time of
the labelled stages). Nothing is checkpointed or evaluated (``OUTPUT_DIR`` is a temporary folder
unless given, ``SOLVER.CHECKPOINT_PERIOD`` and ``TEST.EVAL_PERIOD`` are pushed past the run).

GPU host, the tiny CLIP's pretraining at 128 px (issue 7's lever)::

    python benchmarks/bench_train_step.py --config-file configs/synthetic/pretrain_tiny_clip.yaml \\
        --steps 20 --profile 3 DATASETS.TRAIN "('synth_image_text_train',)"

CPU smoke run: ``tests/benchmarks/test_bench_train_step.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_train_step.py` without install
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from benchmarks.bench_timing import device_name  # noqa: E402

import ttd_d2  # noqa: E402,F401  (registers the backbone, meta-architecture and datasets)
from ttd_d2 import TTDTrainer, load_config  # noqa: E402
from ttd_d2.data.datasets.label_conversion import write_text_atomic  # noqa: E402
from ttd_d2.engine.deferred_scalars import DeferredMetricsHook  # noqa: E402
from ttd_d2.utils.cpu_memory import keep_freed_cpu_memory  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--warmup", type=int, default=5, help="iterations before timing")
    parser.add_argument("--steps", type=int, default=20, help="timed iterations")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="then profile N more iterations")
    parser.add_argument("--output", default="", help="write the report as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    return parser.parse_args(argv)


def build_cfg(args: argparse.Namespace, output_dir: str):
    cfg = load_config(args.config_file, args.opts)
    total = args.warmup + args.steps + args.profile
    cfg.merge_from_list(["OUTPUT_DIR", cfg.OUTPUT_DIR if "OUTPUT_DIR" in args.opts else output_dir,
                         "SOLVER.MAX_ITER", max(cfg.SOLVER.MAX_ITER, total + 1),
                         "SOLVER.CHECKPOINT_PERIOD", 10 * (total + 1), "TEST.EVAL_PERIOD", 0])
    cfg.freeze()
    return cfg


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_cfg(args, tmp)
        if cfg.MODEL.DEVICE == "cpu":
            keep_freed_cpu_memory()  # as tools/train_net.py does
        trainer = TTDTrainer(cfg)
        trainer.resume_or_load(resume=False)
        device = torch.device(cfg.MODEL.DEVICE)

        def iteration() -> None:
            trainer.before_step()
            trainer.run_step()
            trainer.after_step()
            trainer.iter += 1

        with EventStorage(0) as trainer.storage:
            trainer.iter = trainer.start_iter = 0
            trainer.before_train()
            for _ in range(args.warmup):
                iteration()
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                iteration()
            _synchronize(device)
            seconds = (time.perf_counter() - start) / max(args.steps, 1)
            for hook in trainer._hooks:  # SOLVER.DEFER_METRICS: the steps' metrics still on the device
                if isinstance(hook, DeferredMetricsHook):
                    hook.scalars.flush(hook.write)
            data_times = trainer.storage.history("data_time").values()[-args.steps:] if args.steps else []
            report = {
                "config_file": args.config_file,
                "opts": list(args.opts),
                "device": device_name(device),
                "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
                "num_workers": cfg.DATALOADER.NUM_WORKERS,
                "seconds_per_iter": seconds,
                "images_per_s": cfg.SOLVER.IMS_PER_BATCH / seconds,
                "data_time_s": sum(v for v, _ in data_times) / max(len(data_times), 1),
            }
            print(f"{seconds:.4f} s/it, {report['images_per_s']:.1f} img/s, "
                  f"waiting for data {report['data_time_s']:.4f} s/it", flush=True)
            if args.profile:
                from ttd_d2.utils.profiling import profile_steps

                profiled = profile_steps(iteration, args.profile, device)
                report["profile"] = profiled.to_dict()
                print(profiled.table(), flush=True)
            trainer.after_train()
    if args.output:
        write_text_atomic(Path(args.output), json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
